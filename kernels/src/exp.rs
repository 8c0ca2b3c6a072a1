//! `exp` in a form the compiler vectorises inside its caller's loop: e^x = 2^n e^y with n = round(x log2 e) set in the
//! float's exponent bits and y = x - n ln 2 (|y| <= ln 2 / 2, reduced in two steps so that it keeps x's
//! precision), e^y by its Taylor series to the 7th power (truncation error below 1e-8 relative).

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 = LN_2_HIGH + LN_2_LOW, the first with 9 significant bits.
const LN_2_HIGH: f32 = 0.693_359_4;
const LN_2_LOW: f32 = -2.121_944_4e-4;
/// 1.5 x 2^23: adding and subtracting it rounds an f32 of magnitude below 2^22 to the nearest integer.
const ROUND: f32 = 12_582_912.0;
/// Below this e^x is under f32's smallest normal; the result is flushed to zero.
const LOWEST: f32 = -87.0;
/// Above this e^x overflows f32.
const HIGHEST: f32 = 88.0;

/// e^x (0 below -87, +inf above 88, NaN stays NaN), inlined into the caller's loop so that it vectorises.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let clamped = x.clamp(LOWEST, HIGHEST);
    // Adding ROUND leaves round(x log2 e) in the low mantissa bits: read it from there (integer ops on the
    // bits vectorise; an `as i32` cast, which saturates, does not).
    let shifted = clamped * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let power = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    // Cody-Waite: x - n ln 2 with ln 2 split in two, the first part short enough that n * LN_2_HIGH is
    // exact, so the reduced argument keeps x's precision.
    let y = (clamped - n * LN_2_HIGH) - n * LN_2_LOW;
    // 1 + (y + y^2 q(y)): the small terms are summed first and added to 1 last, one rounding at the end.
    let q = 0.5 + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (1.0 / 120.0 + y * (1.0 / 720.0 + y * (1.0 / 5040.0)))));
    let p = 1.0 + (y + y * y * q);
    let scale = f32::from_bits((power.wrapping_add(127) as u32) << 23);
    let e = p * scale;
    if x < LOWEST {
        0.0
    } else if x > HIGHEST {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = x.exp();
            worst = worst.max(((exp(x) - want) / want).abs());
            x += 0.0137;
        }
        println!("exp: largest relative error {worst:e}");
        assert!(worst < 2e-7, "largest relative error {worst}");
        let edge = [-1000.0, 1000.0, f32::NAN, 0.0, -0.0].map(exp);
        assert_eq!(&edge[..2], &[0.0, f32::INFINITY]);
        assert!(edge[2].is_nan() && edge[3] == 1.0 && edge[4] == 1.0);
    }
}
