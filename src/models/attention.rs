//! Attention in one place: `softmax(q kᵀ / scale + mask) v` over heads, for the UNet and its motion modules,
//! the VAE's mid-block, CLIP and ImageReward.
//!
//! The score tensor `[N, H, L, S]` is what runs out of memory at real sizes: SD 1.5's first level at 16 frames
//! x CFG is N = 32, 8 heads, L = S = 4096, 17 GB of f32 scores for one layer. So scores are computed in
//! chunks over (batch x heads) and query rows, each at most the **score budget** (default
//! [`DEFAULT_SCORE_BUDGET`]); softmax runs along the key axis, which a chunk always holds whole, so every
//! chunk's rows are exactly the rows of the full product. Below the budget the whole product is computed at
//! once, as before.
//!
//! The budget is per thread ([`with_score_budget`]): the models run on the worker thread, and tests can
//! force the chunked path on their own thread without touching others.

use std::cell::Cell;

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;

/// The largest score tensor computed at once, in bytes, unless a thread sets another.
pub const DEFAULT_SCORE_BUDGET: usize = 256 << 20;

/// Bytes per score element (the scores are f32).
const SCORE_BYTES: usize = 4;

thread_local! {
    static BUDGET: Cell<usize> = const { Cell::new(DEFAULT_SCORE_BUDGET) };
}

/// The score budget of this thread, in bytes.
pub fn score_budget() -> usize {
    BUDGET.with(Cell::get)
}

/// Runs `f` with this thread's score budget set to `bytes` (at least one score row is always computed at
/// once), then restores the previous budget.
pub fn with_score_budget<R>(bytes: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(BUDGET.with(|b| b.replace(bytes)));
    f()
}

/// How a chunked attention splits its work: `batch` rows of (batch x heads) and `rows` query rows at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunks {
    pub batch: usize,
    pub rows: usize,
}

/// The chunk sizes for scores of `batch` x `rows` x `keys` within `budget` bytes: whole when they fit, else
/// as many query rows as fit for one (batch x head), then as many of those as fit. Never zero.
pub fn chunks(batch: usize, rows: usize, keys: usize, budget: usize) -> Chunks {
    let row_bytes = keys.max(1).saturating_mul(SCORE_BYTES);
    let fit_rows = (budget / row_bytes).max(1);
    let rows_at_once = rows.max(1).min(fit_rows);
    let fit_batch = (budget / row_bytes.saturating_mul(rows_at_once)).max(1);
    Chunks { batch: batch.max(1).min(fit_batch), rows: rows_at_once }
}

/// Multi-head attention on `q` [N, H, L, d], `k` and `v` [N, H, S, d] -> [N, H, L, d]. The scores are
/// divided by `score_divisor` when given (`sqrt(d)`, as transformers' BERT does; callers whose reference
/// scales `q` beforehand do that and pass `None`, so the arithmetic stays exactly the reference's), and
/// `mask` is added: any shape that broadcasts to [N, H, L, S] with each
/// of its first three sizes either 1 or the full size.
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    score_divisor: Option<f64>,
    mask: Option<Tensor<4>>,
) -> Tensor<4> {
    let [n, h, l, d] = q.dims();
    let s = k.dims()[2];
    let dv = v.dims()[3];
    let plan = chunks(n * h, l, s, score_budget());
    if plan.batch >= n * h && plan.rows >= l {
        return scores_times_values(q, k, v, score_divisor, mask);
    }
    // Flatten (batch, heads) so that one axis can be cut anywhere; the mask follows when it has those axes.
    let (b, q, k, v) = (n * h, q.reshape([n * h, 1, l, d]), k.reshape([n * h, 1, s, d]), v.reshape([n * h, 1, s, dv]));
    let mask = mask.map(|m| {
        let [mn, mh, ml, ms] = m.dims();
        // Broadcast over the axes the mask lacks, then flatten like q (a mask is small next to the scores:
        // it lacks the query axis, or the keys are few).
        m.expand([if mn == 1 { n } else { mn }, if mh == 1 { h } else { mh }, ml, ms]).reshape([n * h, 1, ml, ms])
    });
    let mut batches = Vec::with_capacity(b.div_ceil(plan.batch));
    for b0 in (0..b).step_by(plan.batch) {
        let b1 = (b0 + plan.batch).min(b);
        let (kb, vb) = (k.clone().slice([b0..b1]), v.clone().slice([b0..b1]));
        let mut rows = Vec::with_capacity(l.div_ceil(plan.rows));
        for r0 in (0..l).step_by(plan.rows) {
            let r1 = (r0 + plan.rows).min(l);
            let qc = q.clone().slice([b0..b1, 0..1, r0..r1]);
            let mc = mask.as_ref().map(|m| {
                let ml = m.dims()[2];
                if ml == 1 { m.clone().slice([b0..b1]) } else { m.clone().slice([b0..b1, 0..1, r0..r1]) }
            });
            rows.push(scores_times_values(qc, kb.clone(), vb.clone(), score_divisor, mc));
        }
        batches.push(Tensor::cat(rows, 2));
    }
    Tensor::cat(batches, 0).reshape([n, h, l, dv])
}

/// The whole product at once: softmax(q kᵀ / divisor + mask) v.
fn scores_times_values(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    score_divisor: Option<f64>,
    mask: Option<Tensor<4>>,
) -> Tensor<4> {
    let mut scores = q.matmul(k.swap_dims(2, 3));
    if let Some(divisor) = score_divisor {
        scores = scores.div_scalar(divisor);
    }
    if let Some(mask) = mask {
        scores = scores + mask;
    }
    softmax(scores, 3).matmul(v)
}

/// [`attention`] for projections laid out as diffusers and transformers keep them: `q` [N, L, H*d], `k` and
/// `v` [N, S, H*d] -> [N, L, H*d].
pub fn attention_packed(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    score_divisor: Option<f64>,
    mask: Option<Tensor<4>>,
) -> Tensor<3> {
    let [n, l, inner] = q.dims();
    let s = k.dims()[1];
    let d = inner / heads.max(1);
    let split = |t: Tensor<3>, len: usize| t.reshape([n, len, heads, d]).swap_dims(1, 2);
    let out = attention(split(q, l), split(k, s), split(v, s), score_divisor, mask);
    out.swap_dims(1, 2).reshape([n, l, inner])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn chunk_sizes_stay_within_the_budget() {
        // Fits: whole.
        assert_eq!(chunks(4, 10, 10, 4 * 10 * 10 * 4), Chunks { batch: 4, rows: 10 });
        // One (batch x head) fits: several of them at once.
        assert_eq!(chunks(8, 10, 10, 2 * 10 * 10 * 4), Chunks { batch: 2, rows: 10 });
        // Not even one: rows.
        assert_eq!(chunks(8, 100, 10, 7 * 10 * 4), Chunks { batch: 1, rows: 7 });
        // Nothing fits: one row at a time, never zero.
        assert_eq!(chunks(8, 100, 1000, 1), Chunks { batch: 1, rows: 1 });
        // SD 1.5 first level at 16 frames x CFG: 17 GB whole; 256 MB chunks.
        let c = chunks(32 * 8, 4096, 4096, DEFAULT_SCORE_BUDGET);
        assert!(c.batch * c.rows * 4096 * 4 <= DEFAULT_SCORE_BUDGET, "{c:?}");
        assert_eq!(c, Chunks { batch: 4, rows: 4096 });
    }

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let values = (a - b).abs().to_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        values.into_iter().fold(0.0, f32::max)
    }

    #[test]
    fn chunked_equals_whole_on_awkward_shapes() {
        let device = Device::flex();
        let rand = |dims: [usize; 4]| Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        // Lengths that no chunk divides; masks of every broadcast shape the models use.
        let (n, h, l, s, d) = (3, 2, 37, 23, 5);
        let (q, k, v) = (rand([n, h, l, d]), rand([n, h, s, d]), rand([n, h, s, d]));
        let masks = [None, Some(rand([n, 1, 1, s])), Some(rand([1, 1, l, s])), Some(rand([n, h, l, s]))];
        for mask in masks {
            let whole = attention(q.clone(), k.clone(), v.clone(), Some(2.2), mask.clone());
            // Budgets that cut rows (one row, 5 rows, 11 rows) and batches (2 of the 6 at once).
            for budget in [1, 5 * s * 4, 11 * s * 4, 2 * l * s * 4] {
                let chunked =
                    with_score_budget(budget, || attention(q.clone(), k.clone(), v.clone(), Some(2.2), mask.clone()));
                assert_eq!(chunked.dims(), [n, h, l, d]);
                let diff = max_diff(whole.clone(), chunked);
                assert!(diff < 1e-5, "budget {budget}, mask {:?}: {diff}", mask.as_ref().map(|m| m.dims()));
            }
        }
        assert_eq!(score_budget(), DEFAULT_SCORE_BUDGET, "the budget is restored");
    }
}
