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

  ;; ---- LoRA merge (src/tensor/wasm/matmul.ts) -------------------------------------------------------
  ;; out[i][j] = scale · Σ_k L[i][k]·R[k][j] in float32, k in order, every product and every sum rounded on
  ;; its own (WebAssembly has no fused multiply-add, so each SIMD lane and the scalar tails compute exactly
  ;; the same value, and so does the JavaScript fallback). Then the delta is rounded to the weight's dtype
  ;; and added in that dtype, as PyTorch's `W.add_(delta.to(W.dtype))`. Byte addresses; strides in elements.

  ;; One output element: Σ_k L[k]·R[k·rs] from k = 0, then · scale.
  (func $lora_dot (param $lp i32) (param $rp i32) (param $rsb i32) (param $r i32) (result f32)
    (local $acc f32) (local $k i32)
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $k) (local.get $r)))
      (local.set $acc (f32.add (local.get $acc) (f32.mul (f32.load (local.get $lp)) (f32.load (local.get $rp)))))
      (local.set $lp (i32.add (local.get $lp) (i32.const 4)))
      (local.set $rp (i32.add (local.get $rp) (local.get $rsb)))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br $each)))
    (local.get $acc))

  ;; Four neighbouring output elements of one row.
  (func $lora_dot4 (param $lp i32) (param $rp i32) (param $rsb i32) (param $r i32) (result v128)
    (local $acc v128) (local $k i32)
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $k) (local.get $r)))
      (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul (v128.load32_splat (local.get $lp)) (v128.load (local.get $rp)))))
      (local.set $lp (i32.add (local.get $lp) (i32.const 4)))
      (local.set $rp (i32.add (local.get $rp) (local.get $rsb)))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br $each)))
    (local.get $acc))

  ;; A 4 × 8 block of the output: each R vector loaded once serves four rows (eight accumulators).
  (func $lora_block4x8 (param $lp i32) (param $lsb i32) (param $rp i32) (param $rsb i32)
    (param $op i32) (param $osb i32) (param $r i32) (param $s v128)
    (local $k i32) (local $l1 i32) (local $l2 i32) (local $l3 i32)
    (local $b0 v128) (local $b1 v128) (local $x v128)
    (local $c00 v128) (local $c01 v128) (local $c10 v128) (local $c11 v128)
    (local $c20 v128) (local $c21 v128) (local $c30 v128) (local $c31 v128)
    (local.set $l1 (i32.add (local.get $lp) (local.get $lsb)))
    (local.set $l2 (i32.add (local.get $l1) (local.get $lsb)))
    (local.set $l3 (i32.add (local.get $l2) (local.get $lsb)))
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $k) (local.get $r)))
      (local.set $b0 (v128.load (local.get $rp)))
      (local.set $b1 (v128.load offset=16 (local.get $rp)))
      (local.set $x (v128.load32_splat (local.get $lp)))
      (local.set $c00 (f32x4.add (local.get $c00) (f32x4.mul (local.get $x) (local.get $b0))))
      (local.set $c01 (f32x4.add (local.get $c01) (f32x4.mul (local.get $x) (local.get $b1))))
      (local.set $x (v128.load32_splat (local.get $l1)))
      (local.set $c10 (f32x4.add (local.get $c10) (f32x4.mul (local.get $x) (local.get $b0))))
      (local.set $c11 (f32x4.add (local.get $c11) (f32x4.mul (local.get $x) (local.get $b1))))
      (local.set $x (v128.load32_splat (local.get $l2)))
      (local.set $c20 (f32x4.add (local.get $c20) (f32x4.mul (local.get $x) (local.get $b0))))
      (local.set $c21 (f32x4.add (local.get $c21) (f32x4.mul (local.get $x) (local.get $b1))))
      (local.set $x (v128.load32_splat (local.get $l3)))
      (local.set $c30 (f32x4.add (local.get $c30) (f32x4.mul (local.get $x) (local.get $b0))))
      (local.set $c31 (f32x4.add (local.get $c31) (f32x4.mul (local.get $x) (local.get $b1))))
      (local.set $lp (i32.add (local.get $lp) (i32.const 4)))
      (local.set $l1 (i32.add (local.get $l1) (i32.const 4)))
      (local.set $l2 (i32.add (local.get $l2) (i32.const 4)))
      (local.set $l3 (i32.add (local.get $l3) (i32.const 4)))
      (local.set $rp (i32.add (local.get $rp) (local.get $rsb)))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br $each)))
    (v128.store (local.get $op) (f32x4.mul (local.get $c00) (local.get $s)))
    (v128.store offset=16 (local.get $op) (f32x4.mul (local.get $c01) (local.get $s)))
    (local.set $op (i32.add (local.get $op) (local.get $osb)))
    (v128.store (local.get $op) (f32x4.mul (local.get $c10) (local.get $s)))
    (v128.store offset=16 (local.get $op) (f32x4.mul (local.get $c11) (local.get $s)))
    (local.set $op (i32.add (local.get $op) (local.get $osb)))
    (v128.store (local.get $op) (f32x4.mul (local.get $c20) (local.get $s)))
    (v128.store offset=16 (local.get $op) (f32x4.mul (local.get $c21) (local.get $s)))
    (local.set $op (i32.add (local.get $op) (local.get $osb)))
    (v128.store (local.get $op) (f32x4.mul (local.get $c30) (local.get $s)))
    (v128.store offset=16 (local.get $op) (f32x4.mul (local.get $c31) (local.get $s))))

  ;; Columns [j, cols) of one output row: four at a time, then one at a time.
  (func $lora_row (param $lp i32) (param $rm i32) (param $rsb i32) (param $op i32)
    (param $j i32) (param $cols i32) (param $r i32) (param $scale f32)
    (block $vectors_done (loop $each_vector
      (br_if $vectors_done (i32.gt_u (i32.add (local.get $j) (i32.const 4)) (local.get $cols)))
      (v128.store (i32.add (local.get $op) (i32.shl (local.get $j) (i32.const 2)))
        (f32x4.mul
          (call $lora_dot4 (local.get $lp) (i32.add (local.get $rm) (i32.shl (local.get $j) (i32.const 2))) (local.get $rsb) (local.get $r))
          (f32x4.splat (local.get $scale))))
      (local.set $j (i32.add (local.get $j) (i32.const 4)))
      (br $each_vector)))
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $j) (local.get $cols)))
      (f32.store (i32.add (local.get $op) (i32.shl (local.get $j) (i32.const 2)))
        (f32.mul
          (call $lora_dot (local.get $lp) (i32.add (local.get $rm) (i32.shl (local.get $j) (i32.const 2))) (local.get $rsb) (local.get $r))
          (local.get $scale)))
      (local.set $j (i32.add (local.get $j) (i32.const 1)))
      (br $each))))

  ;; out (rows × cols, row stride os) = scale · L (rows × r, row stride ls) · R (r × cols, row stride rs).
  (func (export "lora_matmul_f32")
    (param $l i32) (param $ls i32) (param $rm i32) (param $rs i32) (param $out i32) (param $os i32)
    (param $rows i32) (param $cols i32) (param $r i32) (param $scale f32)
    (local $i i32) (local $j i32) (local $q i32) (local $lsb i32) (local $rsb i32) (local $osb i32)
    (local $lp i32) (local $op i32) (local $s v128)
    (local.set $lsb (i32.shl (local.get $ls) (i32.const 2)))
    (local.set $rsb (i32.shl (local.get $rs) (i32.const 2)))
    (local.set $osb (i32.shl (local.get $os) (i32.const 2)))
    (local.set $s (f32x4.splat (local.get $scale)))
    (block $blocks_done (loop $each_block_row
      (br_if $blocks_done (i32.gt_u (i32.add (local.get $i) (i32.const 4)) (local.get $rows)))
      (local.set $lp (i32.add (local.get $l) (i32.mul (local.get $i) (local.get $lsb))))
      (local.set $op (i32.add (local.get $out) (i32.mul (local.get $i) (local.get $osb))))
      (local.set $j (i32.const 0))
      (block $cols_done (loop $each_block
        (br_if $cols_done (i32.gt_u (i32.add (local.get $j) (i32.const 8)) (local.get $cols)))
        (call $lora_block4x8 (local.get $lp) (local.get $lsb)
          (i32.add (local.get $rm) (i32.shl (local.get $j) (i32.const 2))) (local.get $rsb)
          (i32.add (local.get $op) (i32.shl (local.get $j) (i32.const 2))) (local.get $osb)
          (local.get $r) (local.get $s))
        (local.set $j (i32.add (local.get $j) (i32.const 8)))
        (br $each_block)))
      (local.set $q (i32.const 0))
      (block $tails_done (loop $each_tail
        (br_if $tails_done (i32.ge_u (local.get $q) (i32.const 4)))
        (call $lora_row
          (i32.add (local.get $lp) (i32.mul (local.get $q) (local.get $lsb))) (local.get $rm) (local.get $rsb)
          (i32.add (local.get $op) (i32.mul (local.get $q) (local.get $osb)))
          (local.get $j) (local.get $cols) (local.get $r) (local.get $scale))
        (local.set $q (i32.add (local.get $q) (i32.const 1)))
        (br $each_tail)))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br $each_block_row)))
    (block $rows_done (loop $each_row
      (br_if $rows_done (i32.ge_u (local.get $i) (local.get $rows)))
      (call $lora_row
        (i32.add (local.get $l) (i32.mul (local.get $i) (local.get $lsb))) (local.get $rm) (local.get $rsb)
        (i32.add (local.get $out) (i32.mul (local.get $i) (local.get $osb)))
        (i32.const 0) (local.get $cols) (local.get $r) (local.get $scale))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $each_row))))

  ;; float32 bits → bfloat16 bits, round to nearest even; any NaN becomes 0x7fc0 (PyTorch's).
  (func $lora_bf16 (param $v i32) (result i32)
    (if (result i32) (i32.gt_u (i32.and (local.get $v) (i32.const 0x7fffffff)) (i32.const 0x7f800000))
      (then (i32.const 0x7fc0))
      (else (i32.shr_u
        (i32.add (i32.add (local.get $v) (i32.const 0x7fff)) (i32.and (i32.shr_u (local.get $v) (i32.const 16)) (i32.const 1)))
        (i32.const 16)))))

  ;; n bfloat16 weights (any 2-byte alignment) += n float32 deltas: w ← bf16(f32(w) + f32(bf16(d))), eight at
  ;; a time. Rounding to bfloat16 is done on float32 bit patterns (add 0x7fff plus the lowest kept bit; the
  ;; high half is the result). A NaN (in a delta or a sum) sends its eight elements to the scalar path,
  ;; which gives it PyTorch's 0x7fc0; finite values and infinities round right as they are.
  (func (export "lora_add_bf16") (param $w i32) (param $d i32) (param $n i32)
    (local $end i32) (local $y i32) (local $k i32) (local $wv v128) (local $lo v128) (local $hi v128)
    (local $dlo v128) (local $dhi v128) (local $half v128) (local $one v128) (local $high v128)
    (local.set $half (i32x4.splat (i32.const 0x7fff)))
    (local.set $one (i32x4.splat (i32.const 1)))
    (local.set $high (i32x4.splat (i32.const 0xffff0000)))
    (local.set $end (i32.add (local.get $d) (i32.shl (local.get $n) (i32.const 2))))
    (block $vectors_done (loop $each_vector
      (br_if $vectors_done (i32.gt_u (i32.add (local.get $d) (i32.const 32)) (local.get $end)))
      (local.set $wv (v128.load (local.get $w)))
      (local.set $dlo (v128.load (local.get $d)))
      (local.set $dhi (v128.load offset=16 (local.get $d)))
      ;; Each delta rounded to bfloat16 (as float32), plus its weight widened to float32.
      (local.set $lo
        (f32x4.add
          (i32x4.shl (i32x4.extend_low_i16x8_u (local.get $wv)) (i32.const 16))
          (v128.and (i32x4.add (i32x4.add (local.get $dlo) (local.get $half))
            (v128.and (i32x4.shr_u (local.get $dlo) (i32.const 16)) (local.get $one))) (local.get $high))))
      (local.set $hi
        (f32x4.add
          (i32x4.shl (i32x4.extend_high_i16x8_u (local.get $wv)) (i32.const 16))
          (v128.and (i32x4.add (i32x4.add (local.get $dhi) (local.get $half))
            (v128.and (i32x4.shr_u (local.get $dhi) (i32.const 16)) (local.get $one))) (local.get $high))))
      (if (v128.any_true (v128.or
            (v128.or (f32x4.ne (local.get $dlo) (local.get $dlo)) (f32x4.ne (local.get $dhi) (local.get $dhi)))
            (v128.or (f32x4.ne (local.get $lo) (local.get $lo)) (f32x4.ne (local.get $hi) (local.get $hi)))))
        (then
          ;; Rare: a NaN somewhere in these eight; the scalar path does them.
          (local.set $k (i32.const 0))
          (block $eight_done (loop $each_of_eight
            (br_if $eight_done (i32.ge_u (local.get $k) (i32.const 8)))
            (local.set $y
              (i32.reinterpret_f32 (f32.add
                (f32.reinterpret_i32 (i32.shl (i32.load16_u (local.get $w)) (i32.const 16)))
                (f32.reinterpret_i32 (i32.shl (call $lora_bf16 (i32.load (local.get $d))) (i32.const 16))))))
            (i32.store16 (local.get $w) (call $lora_bf16 (local.get $y)))
            (local.set $w (i32.add (local.get $w) (i32.const 2)))
            (local.set $d (i32.add (local.get $d) (i32.const 4)))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br $each_of_eight)))
          (br $each_vector)))
      ;; The sums rounded to bfloat16: the high halves of the rounded bit patterns.
      (v128.store (local.get $w)
        (i16x8.narrow_i32x4_u
          (i32x4.shr_u (i32x4.add (i32x4.add (local.get $lo) (local.get $half))
            (v128.and (i32x4.shr_u (local.get $lo) (i32.const 16)) (local.get $one))) (i32.const 16))
          (i32x4.shr_u (i32x4.add (i32x4.add (local.get $hi) (local.get $half))
            (v128.and (i32x4.shr_u (local.get $hi) (i32.const 16)) (local.get $one))) (i32.const 16))))
      (local.set $w (i32.add (local.get $w) (i32.const 16)))
      (local.set $d (i32.add (local.get $d) (i32.const 32)))
      (br $each_vector)))
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $d) (local.get $end)))
      (local.set $y
        (i32.reinterpret_f32 (f32.add
          (f32.reinterpret_i32 (i32.shl (i32.load16_u (local.get $w)) (i32.const 16)))
          (f32.reinterpret_i32 (i32.shl (call $lora_bf16 (i32.load (local.get $d))) (i32.const 16))))))
      (i32.store16 (local.get $w) (call $lora_bf16 (local.get $y)))
      (local.set $w (i32.add (local.get $w) (i32.const 2)))
      (local.set $d (i32.add (local.get $d) (i32.const 4)))
      (br $each)))
  )

  ;; n float32 weights (any alignment) += n float32 deltas.
  (func (export "lora_add_f32") (param $w i32) (param $d i32) (param $n i32)
    (local $end i32)
    (local.set $end (i32.add (local.get $d) (i32.shl (local.get $n) (i32.const 2))))
    (block $vectors_done (loop $each_vector
      (br_if $vectors_done (i32.gt_u (i32.add (local.get $d) (i32.const 16)) (local.get $end)))
      (v128.store (local.get $w) (f32x4.add (v128.load (local.get $w)) (v128.load (local.get $d))))
      (local.set $w (i32.add (local.get $w) (i32.const 16)))
      (local.set $d (i32.add (local.get $d) (i32.const 16)))
      (br $each_vector)))
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $d) (local.get $end)))
      (f32.store (local.get $w) (f32.add (f32.load (local.get $w)) (f32.load (local.get $d))))
      (local.set $w (i32.add (local.get $w) (i32.const 4)))
      (local.set $d (i32.add (local.get $d) (i32.const 4)))
      (br $each)))
  )

  ;; `rows` runs of `len` bytes, the next one `ss` bytes further in the source and `ds` in the destination:
  ;; the rows of a column piece put in place (consolidating expert-parallel saves), one bulk copy each
  ;; instead of a typed-array view and a call per row.
  (func (export "copy_rows") (param $src i32) (param $dst i32) (param $len i32) (param $rows i32) (param $ss i32) (param $ds i32)
    (block $done (loop $each
      (br_if $done (i32.eqz (local.get $rows)))
      (memory.copy (local.get $dst) (local.get $src) (local.get $len))
      (local.set $src (i32.add (local.get $src) (local.get $ss)))
      (local.set $dst (i32.add (local.get $dst) (local.get $ds)))
      (local.set $rows (i32.sub (local.get $rows) (i32.const 1)))
      (br $each)))
  )
)
