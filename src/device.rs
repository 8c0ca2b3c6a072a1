//! Which device the models run on and in which float precision (`--device`, `--dtype`): shared by the command
//! line and the editor window.

/// The compute device the models run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// burn's flex back-end on the CPU (threads and SIMD).
    #[default]
    Cpu,
    /// wgpu's own choice of GPU and API (Vulkan, Metal, DX12; WGSL kernels).
    Wgpu,
    /// wgpu on Vulkan with SPIR-V kernels (cooperative-matrix / tensor-core matmuls on NVIDIA and AMD): only
    /// in a build with `--features vulkan` (see Cargo.toml).
    Vulkan,
    /// burn's CUDA back-end: only in a build with `--features cuda` (see Cargo.toml).
    Cuda,
}

/// `--dtype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    /// The half-precision float type, `None` for f32.
    pub fn half(self) -> Option<burn::tensor::FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::F16 => Some(burn::tensor::FloatDType::F16),
            Precision::Bf16 => Some(burn::tensor::FloatDType::BF16),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}

/// The device of `choice` with `precision` as its float type: every tensor the networks create (weights,
/// activations, inputs) takes it, and loaded weights are cast to it. burn's GroupNorm and LayerNorm widen
/// their statistics to f32 and its flash kernels accumulate in f32. The CPU back-end computes in f32.
pub fn open_device(choice: DeviceChoice, precision: Precision) -> anyhow::Result<burn::tensor::Device> {
    with_precision(choice.device()?, choice, precision)
}

/// `device` (of kind `choice`) with `precision` as its float type; see [`open_device`].
pub fn with_precision(
    mut device: burn::tensor::Device,
    choice: DeviceChoice,
    precision: Precision,
) -> anyhow::Result<burn::tensor::Device> {
    if let Some(dtype) = precision.half() {
        if crate::models::is_cpu(&device) {
            anyhow::bail!("--dtype {}: the CPU back-end computes in f32", precision.name());
        }
        if !device.supports_dtype(dtype) {
            anyhow::bail!("--dtype {}: {} does not support it", precision.name(), choice.name());
        }
        device.configure(dtype).map_err(|e| anyhow::anyhow!("--dtype {}: {e:?}", precision.name()))?;
    }
    Ok(device)
}

/// A device this build cannot open.
#[derive(Debug, thiserror::Error)]
pub enum DeviceUnavailable {
    #[error(
        "--device cuda: this build has no CUDA back-end (build with `cargo build --features cuda`, which needs \
         network access at build time; on NVIDIA GPUs a `--features vulkan` build runs with the driver alone)"
    )]
    Cuda,
    #[error(
        "--device vulkan: this build has no SPIR-V compiler for Vulkan (build with `cargo build --features vulkan`); \
         `--device wgpu` runs on Vulkan through WGSL kernels"
    )]
    Vulkan,
}

impl DeviceChoice {
    pub fn name(self) -> &'static str {
        match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Wgpu => "wgpu",
            DeviceChoice::Vulkan => "vulkan",
            DeviceChoice::Cuda => "cuda",
        }
    }

    /// The first device of this kind (GPUs: the first discrete one, else what the system offers).
    pub fn device(self) -> Result<burn::tensor::Device, DeviceUnavailable> {
        use burn::tensor::{Device, DeviceKind};
        match self {
            DeviceChoice::Cpu => Ok(Device::flex()),
            DeviceChoice::Wgpu => Ok(Device::wgpu(DeviceKind::DefaultDevice)),
            #[cfg(feature = "vulkan")]
            DeviceChoice::Vulkan => Ok(Device::vulkan(DeviceKind::DefaultDevice)),
            #[cfg(not(feature = "vulkan"))]
            DeviceChoice::Vulkan => Err(DeviceUnavailable::Vulkan),
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda => Ok(Device::cuda(0usize)),
            #[cfg(not(feature = "cuda"))]
            DeviceChoice::Cuda => Err(DeviceUnavailable::Cuda),
        }
    }
}
