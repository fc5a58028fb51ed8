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
  ;; PyTorch's `(w.to(torch.float32) * scale).to(torch.bfloat16)` bit for bit. `count` is a multiple of 8.
  ;; A code's magnitude bits shifted into a float32's exponent and mantissa fields, times 2^120, are its value
  ;; exactly (subnormal codes land on float32 subnormals, which the multiply normalizes); the sign is or-ed in.
  ;; The product is one IEEE float32 multiply; bfloat16 rounding is to nearest, ties to even, on its bits.
  ;; NaN (the codes S.1111.111, or a NaN product) becomes 0x7FC0, as PyTorch's rounding makes it.
  (func $dequant_e4m3_lanes (param $c v128) (param $s v128) (result v128)
    (local $nonsign v128) (local $p v128) (local $nan v128)
    (local.set $nonsign (v128.and (local.get $c) (v128.const i32x4 0x7f 0x7f 0x7f 0x7f)))
    (local.set $p (f32x4.mul
      (v128.or
        (f32x4.mul (i32x4.shl (local.get $nonsign) (i32.const 20)) (v128.const f32x4 0x1p120 0x1p120 0x1p120 0x1p120))
        (i32x4.shl (v128.and (local.get $c) (v128.const i32x4 0x80 0x80 0x80 0x80)) (i32.const 24)))
      (local.get $s)))
    (local.set $nan (v128.or
      (i32x4.eq (local.get $nonsign) (v128.const i32x4 0x7f 0x7f 0x7f 0x7f))
      (f32x4.ne (local.get $p) (local.get $p))))
    (v128.bitselect
      (v128.const i32x4 0x7fc0 0x7fc0 0x7fc0 0x7fc0)
      (i32x4.shr_u
        (i32x4.add
          (i32x4.add (local.get $p) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff))
          (v128.and (i32x4.shr_u (local.get $p) (i32.const 16)) (v128.const i32x4 1 1 1 1)))
        (i32.const 16))
      (local.get $nan))
  )

  (func (export "dequant_e4m3_bf16") (param $src i32) (param $dst i32) (param $count i32) (param $scale f32)
    (local $end i32) (local $s v128) (local $w v128)
    (local.set $s (f32x4.splat (local.get $scale)))
    (local.set $end (i32.add (local.get $src) (local.get $count)))
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $src) (local.get $end)))
      ;; Eight codes widened to 16-bit lanes, then four at a time to 32-bit lanes.
      (local.set $w (i16x8.extend_low_i8x16_u (v128.load64_zero (local.get $src))))
      (v128.store (local.get $dst)
        (i16x8.narrow_i32x4_u
          (call $dequant_e4m3_lanes (i32x4.extend_low_i16x8_u (local.get $w)) (local.get $s))
          (call $dequant_e4m3_lanes (i32x4.extend_high_i16x8_u (local.get $w)) (local.get $s))))
      (local.set $src (i32.add (local.get $src) (i32.const 8)))
      (local.set $dst (i32.add (local.get $dst) (i32.const 16)))
      (br $each)))
  )
)
