//! CPU kernels of stepstone, in a crate of their own so that they are compiled optimised in every profile
//! (the stepstone crate is built at opt-level 0 in the test profile, where a hand-written loop runs tens of
//! times slower; see the workspace's Cargo.toml).
//!
//! - [`attention`]: `softmax(q kᵀ · scale) v` over independent heads, in blocks of query rows with a
//!   vectorisable exp (burn flex's kernels call libm's scalar `expf` per score, which bounds them).
//! - [`conv2d`]: NCHW convolution by im2col in tiles of output rows, each product written in place.

mod conv;
mod exp;

pub use conv::{ConvDims, MIN_TILE_PIXELS, TILE_COLUMN_BYTES, conv2d, conv2d_scratch_bytes};

use rayon::prelude::*;

/// Query rows per block: the block's scores (`BLOCK_ROWS` x keys floats) stay within a core's caches at
/// SD 1.5's 4,096 keys (2 MB).
pub const BLOCK_ROWS: usize = 128;

/// Sizes of an [`attention`] call: `heads` independent (batch x head) products of `queries` x `keys` with
/// head size `dim` for q and k and `value_dim` for v.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    pub heads: usize,
    pub queries: usize,
    pub keys: usize,
    pub dim: usize,
    pub value_dim: usize,
}

/// Why a kernel refused its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// The buffer `name` does not hold the values the sizes call for.
    Length { kernel: &'static str, name: &'static str, expected: usize, found: usize },
    /// The sizes themselves admit no result.
    Shape { kernel: &'static str, reason: String },
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Length { kernel, name, expected, found } => {
                write!(f, "{kernel}: {name} holds {found} values, expected {expected}")
            }
            Self::Shape { kernel, reason } => write!(f, "{kernel}: {reason}"),
        }
    }
}

impl std::error::Error for KernelError {}

/// `softmax(q kᵀ · scale) v` for each head: `q` [heads, queries, dim], `k` [heads, keys, dim], `v` [heads,
/// keys, value_dim], all row-major; returns [heads, queries, value_dim]. Exact softmax per row (each block
/// holds its rows' scores whole), heads and row blocks in parallel on rayon's pool.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], dims: AttentionDims, scale: f32) -> Result<Vec<f32>, KernelError> {
    let AttentionDims { heads, queries, keys, dim, value_dim } = dims;
    for (name, data, expected) in
        [("q", q, heads * queries * dim), ("k", k, heads * keys * dim), ("v", v, heads * keys * value_dim)]
    {
        if data.len() != expected {
            return Err(KernelError::Length { kernel: "attention", name, expected, found: data.len() });
        }
    }
    let mut out = vec![0.0f32; heads * queries * value_dim];
    if out.is_empty() || keys == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(queries * value_dim).enumerate().for_each(|(head, out_head)| {
        let q_head = &q[head * queries * dim..(head + 1) * queries * dim];
        let k_head = &k[head * keys * dim..(head + 1) * keys * dim];
        let v_head = &v[head * keys * value_dim..(head + 1) * keys * value_dim];
        out_head.par_chunks_mut(BLOCK_ROWS * value_dim).enumerate().for_each(|(block, out_block)| {
            let first = block * BLOCK_ROWS;
            let rows = out_block.len() / value_dim;
            let q_block = &q_head[first * dim..(first + rows) * dim];
            block_attention(q_block, k_head, v_head, out_block, [rows, keys, dim, value_dim], scale);
        });
    });
    Ok(out)
}

/// One block of `rows` query rows against all keys of a head.
fn block_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    [rows, keys, dim, value_dim]: [usize; 4],
    scale: f32,
) {
    let mut scores = vec![0.0f32; rows * keys];
    // SAFETY: every pointer addresses a live slice of exactly the extent gemm reads or writes with these
    // sizes and strides (checked by the callers' length checks): scores [rows, keys] row-major, q [rows,
    // dim] row-major, kᵀ read from k [keys, dim] row-major, out [rows, value_dim], v [keys, value_dim].
    unsafe {
        gemm::gemm(
            rows,
            keys,
            dim,
            scores.as_mut_ptr(),
            1,
            keys as isize,
            false,
            q.as_ptr(),
            1,
            dim as isize,
            k.as_ptr(),
            dim as isize,
            1,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    softmax_rows_kernel()(&mut scores, keys);
    // SAFETY: as above.
    unsafe {
        gemm::gemm(
            rows,
            value_dim,
            keys,
            out.as_mut_ptr(),
            1,
            value_dim as isize,
            false,
            scores.as_ptr(),
            1,
            keys as isize,
            v.as_ptr(),
            1,
            value_dim as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Lanes of the reductions: independent accumulators, which the compiler keeps in vector registers.
const LANES: usize = 16;

/// `row <- softmax(row)` for each row of `scores` ([rows, keys]).
type SoftmaxRows = fn(&mut [f32], usize);

/// The widest vector instructions this CPU has for [`softmax_rows`]: AVX-512, else AVX2 + FMA, else the
/// target's baseline, chosen once.
fn softmax_rows_kernel() -> SoftmaxRows {
    static KERNEL: std::sync::OnceLock<SoftmaxRows> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return |s, k| {
                    // SAFETY: the CPU has AVX-512F (checked just above).
                    unsafe { softmax_rows_avx512(s, k) }
                };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return |s, k| {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    unsafe { softmax_rows_avx2(s, k) }
                };
            }
        }
        softmax_rows
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn softmax_rows_avx512(scores: &mut [f32], keys: usize) {
    softmax_rows(scores, keys)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_rows_avx2(scores: &mut [f32], keys: usize) {
    softmax_rows(scores, keys)
}

#[inline(always)]
fn softmax_rows(scores: &mut [f32], keys: usize) {
    for row in scores.chunks_exact_mut(keys) {
        let max = row_max(row);
        let mut acc = [0.0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            for (a, x) in acc.iter_mut().zip(chunk.iter_mut()) {
                let e = exp::exp(*x - max);
                *x = e;
                *a += e;
            }
        }
        let mut sum: f32 = acc.into_iter().sum();
        for x in chunks.into_remainder() {
            *x = exp::exp(*x - max);
            sum += *x;
        }
        // Probabilities as PyTorch's softmax forms them (times the reciprocal of the sum), so that the
        // product with v rounds as the reference's does.
        let inverse = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inverse;
        }
    }
}

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = if x > *a { x } else { *a };
        }
    }
    let mut max = acc.into_iter().fold(f32::NEG_INFINITY, f32::max);
    for &x in rest {
        max = max.max(x);
    }
    max
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn reference(q: &[f32], k: &[f32], v: &[f32], d: AttentionDims, scale: f32) -> Vec<f32> {
        let mut out = vec![0.0f32; d.heads * d.queries * d.value_dim];
        for h in 0..d.heads {
            for i in 0..d.queries {
                let s: Vec<f64> = (0..d.keys)
                    .map(|j| {
                        (0..d.dim)
                            .map(|c| {
                                f64::from(q[(h * d.queries + i) * d.dim + c])
                                    * f64::from(k[(h * d.keys + j) * d.dim + c])
                            })
                            .sum::<f64>()
                            * f64::from(scale)
                    })
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..d.value_dim {
                    let o: f64 = (0..d.keys).map(|j| e[j] * f64::from(v[(h * d.keys + j) * d.value_dim + c])).sum();
                    out[(h * d.queries + i) * d.value_dim + c] = (o / sum) as f32;
                }
            }
        }
        out
    }

    pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / 16_777_216.0 - 0.5) * 6.0
            })
            .collect()
    }

    /// Against a float64 reference: row counts that no block divides, one key, keys not a multiple of the
    /// reduction lanes, value sizes unlike the head size, large scores (softmax near one-hot).
    #[test]
    fn attention_equals_a_float64_reference() {
        for (heads, queries, keys, dim, value_dim, scale) in [
            (3, 1, 1, 4, 4, 0.5),
            (2, BLOCK_ROWS + 3, 37, 5, 7, 0.45),
            (1, 2 * BLOCK_ROWS, 300, 40, 40, 1.0 / 40f32.sqrt()),
            (4, 9, 77, 40, 40, 4.0),
        ] {
            let d = AttentionDims { heads, queries, keys, dim, value_dim };
            let (q, k, v) =
                (values(heads * queries * dim, 1), values(heads * keys * dim, 2), values(heads * keys * value_dim, 3));
            let got = attention(&q, &k, &v, d, scale).unwrap();
            let want = reference(&q, &k, &v, d, scale);
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(got.iter().all(|x| x.is_finite()) && worst < 2e-5, "{d:?}: max difference {worst}");
        }
    }

    #[test]
    fn wrong_lengths_are_named() {
        let d = AttentionDims { heads: 1, queries: 2, keys: 3, dim: 4, value_dim: 4 };
        let err = attention(&[0.0; 8], &[0.0; 11], &[0.0; 12], d, 1.0).unwrap_err();
        assert_eq!(err, KernelError::Length { kernel: "attention", name: "k", expected: 12, found: 11 });
    }
}
