;; Transposes of 16- and 32-bit matrices with 128-bit SIMD shuffles, and the bfloat16 → float32 widening.
;; Hand-written: the transposes are what every expert merge and split spends its time in. Addresses are byte offsets into the exported memory; strides
;; are in elements; rows and cols must be multiples of the block edge (8 for 16-bit, 4 for 32-bit).
;; dst[c * ds + r] = src[r * ss + c]
(module
  ;; Shared, so the writer thread can write chunks straight out of it; at most 2 GB, the arena's size.
  (memory (export "memory") 1 32768 shared)

  (func (export "transpose16")
    (param $src i32) (param $dst i32) (param $rows i32) (param $cols i32) (param $ss i32) (param $ds i32)
    (local $r i32) (local $c i32) (local $p i32) (local $q i32) (local $ssb i32) (local $dsb i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $a4 v128) (local $a5 v128) (local $a6 v128) (local $a7 v128)
    (local $b0 v128) (local $b1 v128) (local $b2 v128) (local $b3 v128)
    (local $b4 v128) (local $b5 v128) (local $b6 v128) (local $b7 v128)
    (local.set $ssb (i32.shl (local.get $ss) (i32.const 1)))
    (local.set $dsb (i32.shl (local.get $ds) (i32.const 1)))
    (block $rows_done (loop $each_row_block
      (br_if $rows_done (i32.ge_u (local.get $r) (local.get $rows)))
      (local.set $c (i32.const 0))
      (block $cols_done (loop $each_col_block
        (br_if $cols_done (i32.ge_u (local.get $c) (local.get $cols)))
        ;; Eight source rows of eight elements.
        (local.set $p (i32.add (local.get $src)
          (i32.shl (i32.add (i32.mul (local.get $r) (local.get $ss)) (local.get $c)) (i32.const 1))))
        (local.set $a0 (v128.load (local.get $p)))
        (local.set $a1 (v128.load (local.tee $p (i32.add (local.get $p) (local.get $ssb)))))
        (local.set $a2 (v128.load (local.tee $p (i32.add (local.get $p) (local.get $ssb)))))
        (local.set $a3 (v128.load (local.tee $p (i32.add (local.get $p) (local.get $ssb)))))
        (local.set $a4 (v128.load (local.tee $p (i32.add (local.get $p) (local.get $ssb)))))
        (local.set $a5 (v128.load (local.tee $p (i32.add (local.get $p) (local.get $ssb)))))
        (local.set $a6 (v128.load (local.tee $p (i32.add (local.get $p) (local.get $ssb)))))
        (local.set $a7 (v128.load (local.tee $p (i32.add (local.get $p) (local.get $ssb)))))
        ;; Interleave 16-bit lanes of row pairs.
        (local.set $b0 (i8x16.shuffle 0 1 16 17 2 3 18 19 4 5 20 21 6 7 22 23 (local.get $a0) (local.get $a1)))
        (local.set $b1 (i8x16.shuffle 8 9 24 25 10 11 26 27 12 13 28 29 14 15 30 31 (local.get $a0) (local.get $a1)))
        (local.set $b2 (i8x16.shuffle 0 1 16 17 2 3 18 19 4 5 20 21 6 7 22 23 (local.get $a2) (local.get $a3)))
        (local.set $b3 (i8x16.shuffle 8 9 24 25 10 11 26 27 12 13 28 29 14 15 30 31 (local.get $a2) (local.get $a3)))
        (local.set $b4 (i8x16.shuffle 0 1 16 17 2 3 18 19 4 5 20 21 6 7 22 23 (local.get $a4) (local.get $a5)))
        (local.set $b5 (i8x16.shuffle 8 9 24 25 10 11 26 27 12 13 28 29 14 15 30 31 (local.get $a4) (local.get $a5)))
        (local.set $b6 (i8x16.shuffle 0 1 16 17 2 3 18 19 4 5 20 21 6 7 22 23 (local.get $a6) (local.get $a7)))
        (local.set $b7 (i8x16.shuffle 8 9 24 25 10 11 26 27 12 13 28 29 14 15 30 31 (local.get $a6) (local.get $a7)))
        ;; Interleave 32-bit lanes.
        (local.set $a0 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $b0) (local.get $b2)))
        (local.set $a1 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $b0) (local.get $b2)))
        (local.set $a2 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $b1) (local.get $b3)))
        (local.set $a3 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $b1) (local.get $b3)))
        (local.set $a4 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $b4) (local.get $b6)))
        (local.set $a5 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $b4) (local.get $b6)))
        (local.set $a6 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $b5) (local.get $b7)))
        (local.set $a7 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $b5) (local.get $b7)))
        ;; Interleave 64-bit lanes: each vector is now one column, stored as a destination row.
        (local.set $q (i32.add (local.get $dst)
          (i32.shl (i32.add (i32.mul (local.get $c) (local.get $ds)) (local.get $r)) (i32.const 1))))
        (v128.store (local.get $q)
          (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $a0) (local.get $a4)))
        (v128.store (local.tee $q (i32.add (local.get $q) (local.get $dsb)))
          (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $a0) (local.get $a4)))
        (v128.store (local.tee $q (i32.add (local.get $q) (local.get $dsb)))
          (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $a1) (local.get $a5)))
        (v128.store (local.tee $q (i32.add (local.get $q) (local.get $dsb)))
          (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $a1) (local.get $a5)))
        (v128.store (local.tee $q (i32.add (local.get $q) (local.get $dsb)))
          (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $a2) (local.get $a6)))
        (v128.store (local.tee $q (i32.add (local.get $q) (local.get $dsb)))
          (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $a2) (local.get $a6)))
        (v128.store (local.tee $q (i32.add (local.get $q) (local.get $dsb)))
          (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $a3) (local.get $a7)))
        (v128.store (local.tee $q (i32.add (local.get $q) (local.get $dsb)))
          (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $a3) (local.get $a7)))
        (local.set $c (i32.add (local.get $c) (i32.const 8)))
        (br $each_col_block)))
      (local.set $r (i32.add (local.get $r) (i32.const 8)))
      (br $each_row_block)))
  )

  (func (export "transpose32")
    (param $src i32) (param $dst i32) (param $rows i32) (param $cols i32) (param $ss i32) (param $ds i32)
    (local $r i32) (local $c i32) (local $p i32) (local $q i32) (local $ssb i32) (local $dsb i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $b0 v128) (local $b1 v128) (local $b2 v128) (local $b3 v128)
    (local.set $ssb (i32.shl (local.get $ss) (i32.const 2)))
    (local.set $dsb (i32.shl (local.get $ds) (i32.const 2)))
    (block $rows_done (loop $each_row_block
      (br_if $rows_done (i32.ge_u (local.get $r) (local.get $rows)))
      (local.set $c (i32.const 0))
      (block $cols_done (loop $each_col_block
        (br_if $cols_done (i32.ge_u (local.get $c) (local.get $cols)))
        (local.set $p (i32.add (local.get $src)
          (i32.shl (i32.add (i32.mul (local.get $r) (local.get $ss)) (local.get $c)) (i32.const 2))))
        (local.set $a0 (v128.load (local.get $p)))
        (local.set $a1 (v128.load (local.tee $p (i32.add (local.get $p) (local.get $ssb)))))
        (local.set $a2 (v128.load (local.tee $p (i32.add (local.get $p) (local.get $ssb)))))
        (local.set $a3 (v128.load (local.tee $p (i32.add (local.get $p) (local.get $ssb)))))
        ;; Interleave 32-bit lanes of row pairs, then 64-bit lanes: columns.
        (local.set $b0 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a0) (local.get $a1)))
        (local.set $b1 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a0) (local.get $a1)))
        (local.set $b2 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a2) (local.get $a3)))
        (local.set $b3 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a2) (local.get $a3)))
        (local.set $q (i32.add (local.get $dst)
          (i32.shl (i32.add (i32.mul (local.get $c) (local.get $ds)) (local.get $r)) (i32.const 2))))
        (v128.store (local.get $q)
          (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $b0) (local.get $b2)))
        (v128.store (local.tee $q (i32.add (local.get $q) (local.get $dsb)))
          (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $b0) (local.get $b2)))
        (v128.store (local.tee $q (i32.add (local.get $q) (local.get $dsb)))
          (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $b1) (local.get $b3)))
        (v128.store (local.tee $q (i32.add (local.get $q) (local.get $dsb)))
          (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $b1) (local.get $b3)))
        (local.set $c (i32.add (local.get $c) (i32.const 4)))
        (br $each_col_block)))
      (local.set $r (i32.add (local.get $r) (i32.const 4)))
      (br $each_row_block)))
  )

  ;; bfloat16 → float32 bit patterns, `count` (a multiple of 8) elements: each 16-bit word becomes the high
  ;; half of a 32-bit word, which is the whole cast (every bfloat16 is a float32 with a shorter mantissa).
  (func (export "widen_bf16") (param $src i32) (param $dst i32) (param $count i32)
    (local $end i32) (local $v v128)
    (local.set $end (i32.add (local.get $src) (i32.shl (local.get $count) (i32.const 1))))
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $src) (local.get $end)))
      (local.set $v (v128.load (local.get $src)))
      (v128.store (local.get $dst) (i32x4.shl (i32x4.extend_low_i16x8_u (local.get $v)) (i32.const 16)))
      (v128.store offset=16 (local.get $dst) (i32x4.shl (i32x4.extend_high_i16x8_u (local.get $v)) (i32.const 16)))
      (local.set $src (i32.add (local.get $src) (i32.const 16)))
      (local.set $dst (i32.add (local.get $dst) (i32.const 32)))
      (br $each)))
  )

  ;; ---- dequant_*: quantized checkpoints (src/quant/dequantize.ts) ------------------------------------------
  ;; float8_e4m3fn codes times one float32 scale, rounded to bfloat16: dst[k] = bf16(f32(src[k]) * scale),
  ;; PyTorch's `(w.to(torch.float32) * scale).to(torch.bfloat16)` bit for bit, for a finite scale (the caller
  ;; takes the others). `count` is a multiple of 8. Each code becomes its exact value as a bfloat16 (normal
  ;; codes by moving their fields, e + 120 and m; the subnormal ones from a table), widened to float32
  ;; (so no operand is ever subnormal, which x86 multiplies slowly), times the scale in one IEEE float32
  ;; multiply, rounded to nearest even on the product's bits. The NaN codes S.1111.111 become 0x7FC0, as
  ;; PyTorch's rounding makes every NaN.
  (func (export "dequant_e4m3_bf16") (param $src i32) (param $dst i32) (param $count i32) (param $scale f32)
    (local $end i32) (local $s v128) (local $zero v128) (local $v v128) (local $n v128) (local $nan v128) (local $sub v128)
    (local $lo v128) (local $hi v128) (local $m v128) (local $p v128) (local $r0 v128) (local $r1 v128)
    (local.set $s (f32x4.splat (local.get $scale)))
    (local.set $end (i32.add (local.get $src) (local.get $count)))
    ;; Sixteen codes a round while they last, then eight.
    (block $done16 (loop $each16
      (br_if $done16 (i32.gt_u (i32.add (local.get $src) (i32.const 16)) (local.get $end)))
      (local.set $v (v128.load (local.get $src)))
      (local.set $n (v128.and (local.get $v) (v128.const i8x16 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f)))
      (local.set $nan (i8x16.eq (local.get $n) (v128.const i8x16 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f)))
      (local.set $sub (i8x16.lt_u (local.get $n) (v128.const i8x16 8 8 8 8 8 8 8 8 8 8 8 8 8 8 8 8)))
      ;; Subnormal codes (0–7) from a table: m × 2^-9 as bfloat16, low and high bytes; 0 for the rest.
      (local.set $lo (i8x16.swizzle (v128.const i8x16 0x00 0x00 0x80 0xc0 0x00 0x20 0x40 0x60 0 0 0 0 0 0 0 0) (local.get $n)))
      (local.set $hi (i8x16.swizzle (v128.const i8x16 0x00 0x3b 0x3b 0x3b 0x3c 0x3c 0x3c 0x3c 0 0 0 0 0 0 0 0) (local.get $n)))
      ;; The low eight codes as bfloat16 magnitudes (exact: every e4m3 value is a bfloat16), signed.
      (local.set $m (v128.bitselect
        (i8x16.shuffle 0 16 1 17 2 18 3 19 4 20 5 21 6 22 7 23 (local.get $lo) (local.get $hi))
        (i16x8.add (i16x8.shl (i16x8.extend_low_i8x16_u (local.get $n)) (i32.const 4)) (v128.const i16x8 0x3c00 0x3c00 0x3c00 0x3c00 0x3c00 0x3c00 0x3c00 0x3c00))
        (i16x8.extend_low_i8x16_s (local.get $sub))))
      (local.set $m (v128.or (local.get $m)
        (v128.and (i16x8.shl (i16x8.extend_low_i8x16_u (local.get $v)) (i32.const 8)) (v128.const i16x8 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000))))
      (local.set $p (f32x4.mul (i8x16.shuffle 0 1 16 17 2 3 18 19 4 5 20 21 6 7 22 23 (local.get $zero) (local.get $m)) (local.get $s)))
      (local.set $r0 (i32x4.shr_u
        (i32x4.add
          (i32x4.add (local.get $p) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff))
          (v128.and (i32x4.shr_u (local.get $p) (i32.const 16)) (v128.const i32x4 1 1 1 1)))
        (i32.const 16)))
      (local.set $p (f32x4.mul (i8x16.shuffle 8 9 24 25 10 11 26 27 12 13 28 29 14 15 30 31 (local.get $zero) (local.get $m)) (local.get $s)))
      (local.set $r1 (i32x4.shr_u
        (i32x4.add
          (i32x4.add (local.get $p) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff))
          (v128.and (i32x4.shr_u (local.get $p) (i32.const 16)) (v128.const i32x4 1 1 1 1)))
        (i32.const 16)))
      (v128.store (local.get $dst)
        (v128.bitselect
          (v128.const i16x8 0x7fc0 0x7fc0 0x7fc0 0x7fc0 0x7fc0 0x7fc0 0x7fc0 0x7fc0)
          (i16x8.narrow_i32x4_u (local.get $r0) (local.get $r1))
          (i16x8.extend_low_i8x16_s (local.get $nan))))
      ;; The high eight codes as bfloat16 magnitudes (exact: every e4m3 value is a bfloat16), signed.
      (local.set $m (v128.bitselect
        (i8x16.shuffle 8 24 9 25 10 26 11 27 12 28 13 29 14 30 15 31 (local.get $lo) (local.get $hi))
        (i16x8.add (i16x8.shl (i16x8.extend_high_i8x16_u (local.get $n)) (i32.const 4)) (v128.const i16x8 0x3c00 0x3c00 0x3c00 0x3c00 0x3c00 0x3c00 0x3c00 0x3c00))
        (i16x8.extend_high_i8x16_s (local.get $sub))))
      (local.set $m (v128.or (local.get $m)
        (v128.and (i16x8.shl (i16x8.extend_high_i8x16_u (local.get $v)) (i32.const 8)) (v128.const i16x8 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000))))
      (local.set $p (f32x4.mul (i8x16.shuffle 0 1 16 17 2 3 18 19 4 5 20 21 6 7 22 23 (local.get $zero) (local.get $m)) (local.get $s)))
      (local.set $r0 (i32x4.shr_u
        (i32x4.add
          (i32x4.add (local.get $p) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff))
          (v128.and (i32x4.shr_u (local.get $p) (i32.const 16)) (v128.const i32x4 1 1 1 1)))
        (i32.const 16)))
      (local.set $p (f32x4.mul (i8x16.shuffle 8 9 24 25 10 11 26 27 12 13 28 29 14 15 30 31 (local.get $zero) (local.get $m)) (local.get $s)))
      (local.set $r1 (i32x4.shr_u
        (i32x4.add
          (i32x4.add (local.get $p) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff))
          (v128.and (i32x4.shr_u (local.get $p) (i32.const 16)) (v128.const i32x4 1 1 1 1)))
        (i32.const 16)))
      (v128.store offset=16 (local.get $dst)
        (v128.bitselect
          (v128.const i16x8 0x7fc0 0x7fc0 0x7fc0 0x7fc0 0x7fc0 0x7fc0 0x7fc0 0x7fc0)
          (i16x8.narrow_i32x4_u (local.get $r0) (local.get $r1))
          (i16x8.extend_high_i8x16_s (local.get $nan))))
      (local.set $src (i32.add (local.get $src) (i32.const 16)))
      (local.set $dst (i32.add (local.get $dst) (i32.const 32)))
      (br $each16)))
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $src) (local.get $end)))
      (local.set $v (v128.load64_zero (local.get $src)))
      (local.set $n (v128.and (local.get $v) (v128.const i8x16 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f)))
      (local.set $nan (i8x16.eq (local.get $n) (v128.const i8x16 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f 0x7f)))
      (local.set $sub (i8x16.lt_u (local.get $n) (v128.const i8x16 8 8 8 8 8 8 8 8 8 8 8 8 8 8 8 8)))
      ;; Subnormal codes (0–7) from a table: m × 2^-9 as bfloat16, low and high bytes; 0 for the rest.
      (local.set $lo (i8x16.swizzle (v128.const i8x16 0x00 0x00 0x80 0xc0 0x00 0x20 0x40 0x60 0 0 0 0 0 0 0 0) (local.get $n)))
      (local.set $hi (i8x16.swizzle (v128.const i8x16 0x00 0x3b 0x3b 0x3b 0x3c 0x3c 0x3c 0x3c 0 0 0 0 0 0 0 0) (local.get $n)))
      ;; The low eight codes as bfloat16 magnitudes (exact: every e4m3 value is a bfloat16), signed.
      (local.set $m (v128.bitselect
        (i8x16.shuffle 0 16 1 17 2 18 3 19 4 20 5 21 6 22 7 23 (local.get $lo) (local.get $hi))
        (i16x8.add (i16x8.shl (i16x8.extend_low_i8x16_u (local.get $n)) (i32.const 4)) (v128.const i16x8 0x3c00 0x3c00 0x3c00 0x3c00 0x3c00 0x3c00 0x3c00 0x3c00))
        (i16x8.extend_low_i8x16_s (local.get $sub))))
      (local.set $m (v128.or (local.get $m)
        (v128.and (i16x8.shl (i16x8.extend_low_i8x16_u (local.get $v)) (i32.const 8)) (v128.const i16x8 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000))))
      (local.set $p (f32x4.mul (i8x16.shuffle 0 1 16 17 2 3 18 19 4 5 20 21 6 7 22 23 (local.get $zero) (local.get $m)) (local.get $s)))
      (local.set $r0 (i32x4.shr_u
        (i32x4.add
          (i32x4.add (local.get $p) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff))
          (v128.and (i32x4.shr_u (local.get $p) (i32.const 16)) (v128.const i32x4 1 1 1 1)))
        (i32.const 16)))
      (local.set $p (f32x4.mul (i8x16.shuffle 8 9 24 25 10 11 26 27 12 13 28 29 14 15 30 31 (local.get $zero) (local.get $m)) (local.get $s)))
      (local.set $r1 (i32x4.shr_u
        (i32x4.add
          (i32x4.add (local.get $p) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff))
          (v128.and (i32x4.shr_u (local.get $p) (i32.const 16)) (v128.const i32x4 1 1 1 1)))
        (i32.const 16)))
      (v128.store (local.get $dst)
        (v128.bitselect
          (v128.const i16x8 0x7fc0 0x7fc0 0x7fc0 0x7fc0 0x7fc0 0x7fc0 0x7fc0 0x7fc0)
          (i16x8.narrow_i32x4_u (local.get $r0) (local.get $r1))
          (i16x8.extend_low_i8x16_s (local.get $nan))))
      (local.set $src (i32.add (local.get $src) (i32.const 8)))
      (local.set $dst (i32.add (local.get $dst) (i32.const 16)))
      (br $each)))
  )
)
