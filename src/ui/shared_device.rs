//! One wgpu device for the window and the models (`stepstone edit --device wgpu`).
//!
//! eframe creates the device (its adapter is the one that can present to the window), asking for every
//! feature and limit the adapter has, as burn's own WGSL device would; burn then runs on that same device
//! ([`burn::backend::wgpu::try_init_device`]), so the GPU holds one context and one memory pool for both.
//! Where burn cannot take the window's device (a GL-only adapter, missing limits), the models get their
//! own device as before and the log says why.

use std::sync::Arc;

use burn::backend::wgpu::{RuntimeOptions, WgpuSetup, try_init_device};
use eframe::egui_wgpu::{self, RenderState, WgpuSetupCreateNew};
use eframe::wgpu;

/// eframe's wgpu settings for a window whose device the models will share: the device asks for all the
/// adapter's features (less the experimental ones and `MAPPABLE_PRIMARY_BUFFERS`, as burn's own device does)
/// and all its limits. GL adapters keep eframe's defaults (burn does not run on GL).
pub fn window_options() -> egui_wgpu::WgpuConfiguration {
    let create = WgpuSetupCreateNew {
        device_descriptor: Arc::new(compute_descriptor),
        ..WgpuSetupCreateNew::without_display_handle()
    };
    egui_wgpu::WgpuConfiguration { wgpu_setup: create.into(), ..Default::default() }
}

fn compute_descriptor(adapter: &wgpu::Adapter) -> wgpu::DeviceDescriptor<'static> {
    let info = adapter.get_info();
    if info.backend == wgpu::Backend::Gl {
        return wgpu::DeviceDescriptor {
            label: Some("stepstone window"),
            required_limits: wgpu::Limits {
                max_texture_dimension_2d: 8192,
                ..wgpu::Limits::downlevel_webgl2_defaults()
            },
            ..Default::default()
        };
    }
    let features =
        adapter.features() - wgpu::Features::MAPPABLE_PRIMARY_BUFFERS - wgpu::Features::all_experimental_mask();
    wgpu::DeviceDescriptor {
        label: Some("stepstone window and models"),
        required_features: features,
        required_limits: adapter.limits(),
        memory_hints: wgpu::MemoryHints::MemoryUsage,
        ..Default::default()
    }
}

/// Why the models could not run on the window's device.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("the window has no wgpu device (eframe started another renderer)")]
    NoWgpu,
    #[error("the window's adapter {adapter} runs on {backend:?}, which burn does not compute on")]
    Backend { adapter: String, backend: wgpu::Backend },
    #[error("burn cannot run on the window's device ({adapter}): {message}")]
    Init { adapter: String, message: String },
}

/// A burn device on the window's own wgpu device, with the adapter's name for the log.
pub fn models_device(render: Option<&RenderState>) -> Result<(burn::tensor::Device, String), ShareError> {
    let render = render.ok_or(ShareError::NoWgpu)?;
    let info = render.adapter.get_info();
    let adapter = format!("{} ({:?})", info.name, info.backend);
    if !matches!(info.backend, wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12) {
        return Err(ShareError::Backend { adapter, backend: info.backend });
    }
    let setup = WgpuSetup {
        instance: render.instance.clone(),
        adapter: render.adapter.clone(),
        device: render.device.clone(),
        queue: render.queue.clone(),
        backend: info.backend,
    };
    let device = try_init_device(setup, RuntimeOptions::default())
        .map_err(|e| ShareError::Init { adapter: adapter.clone(), message: e.to_string() })?;
    Ok((burn::tensor::Device::new(device), adapter))
}
