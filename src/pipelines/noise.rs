//! Every random draw of a pipeline goes through a [`NoiseSource`]: a seed makes runs reproducible (on any
//! device: the numbers are made on the CPU), and tests replay the reference's noise from a file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NoiseError {
    #[error("{path}: cannot read noise file: {message}")]
    Read { path: PathBuf, message: String },
    #[error("noise '{name}' is not in the replayed noise file {path}")]
    Missing { name: String, path: PathBuf },
    #[error("noise '{name}' has shape {found:?} in {path}, the pipeline needs {expected:?}")]
    Shape { name: String, path: PathBuf, expected: Vec<usize>, found: Vec<usize> },
}

/// A source of standard-normal noise, one named draw at a time ("candidates", "ni_vsds", "regeneration").
pub trait NoiseSource {
    fn normal(&mut self, name: &str, shape: [usize; 5], device: &Device) -> Result<Tensor<5>, NoiseError>;
}

/// Noise from a seed. Each named draw has its own stream (seed and name mixed), so changing one stage's
/// settings never changes another stage's noise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeededNoise {
    pub seed: u64,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        SeededNoise { seed }
    }

    /// `count` standard-normal values of the stream `name` (Box-Muller over SplitMix64).
    pub fn values(&self, name: &str, count: usize) -> Vec<f32> {
        // FNV-1a of the name, mixed into the seed.
        let mut state =
            name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        state ^= self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        // Uniform in (0, 1]: 53 random bits.
        let mut uniform = move || ((next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let mut out = Vec::with_capacity(count + 1);
        while out.len() < count {
            let (u1, u2) = (uniform(), uniform());
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = std::f64::consts::TAU * u2;
            out.push((r * theta.cos()) as f32);
            out.push((r * theta.sin()) as f32);
        }
        out.truncate(count);
        out
    }
}

impl NoiseSource for SeededNoise {
    fn normal(&mut self, name: &str, shape: [usize; 5], device: &Device) -> Result<Tensor<5>, NoiseError> {
        let values = self.values(name, shape.iter().product());
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }
}

/// Noise replayed from a safetensors file of named f32 tensors (the reference's draws, in tests).
#[derive(Clone, Debug)]
pub struct ReplayNoise {
    path: PathBuf,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl ReplayNoise {
    pub fn from_file(path: &Path) -> Result<Self, NoiseError> {
        let err = |message: String| NoiseError::Read { path: path.to_path_buf(), message };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
        let mut tensors = HashMap::new();
        for (name, view) in file.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                continue;
            }
            let data = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            tensors.insert(name.to_string(), (view.shape().to_vec(), data));
        }
        Ok(ReplayNoise { path: path.to_path_buf(), tensors })
    }

    /// Replays the file's tensor `file_name` for the draw `name` (the names of a reference may differ).
    pub fn alias(&mut self, name: &str, file_name: &str) {
        if let Some(t) = self.tensors.get(file_name).cloned() {
            self.tensors.insert(name.to_string(), t);
        }
    }
}

impl NoiseSource for ReplayNoise {
    fn normal(&mut self, name: &str, shape: [usize; 5], device: &Device) -> Result<Tensor<5>, NoiseError> {
        let (found, data) = self
            .tensors
            .get(name)
            .ok_or_else(|| NoiseError::Missing { name: name.to_string(), path: self.path.clone() })?;
        if found[..] != shape[..] {
            return Err(NoiseError::Shape {
                name: name.to_string(),
                path: self.path.clone(),
                expected: shape.to_vec(),
                found: found.clone(),
            });
        }
        Ok(Tensor::from_data(TensorData::new(data.clone(), shape), device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_is_reproducible_standard_normal_and_named() {
        let a = SeededNoise::new(42).values("candidates", 20_000);
        assert_eq!(a, SeededNoise::new(42).values("candidates", 20_000));
        assert_ne!(a[..8], SeededNoise::new(43).values("candidates", 8)[..]);
        assert_ne!(a[..8], SeededNoise::new(42).values("regeneration", 8)[..]);
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean}, variance {var}");
        // A prefix of a longer draw is the shorter draw: shapes do not reshuffle the numbers.
        assert_eq!(SeededNoise::new(42).values("candidates", 7)[..], a[..7]);
    }
}
