//! `stepstone devices`: what this machine offers to each `--device` choice.

use burn::tensor::{Device, DeviceType};

use super::DeviceChoice;

/// One line per device: the `--device` value that reaches it, its index and its name.
pub fn devices() -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("cpu      burn flex on the CPU, {threads} threads");
    list(DeviceChoice::Wgpu, DeviceType::Wgpu);
    #[cfg(feature = "vulkan")]
    list(DeviceChoice::Vulkan, DeviceType::Vulkan);
    #[cfg(not(feature = "vulkan"))]
    println!("vulkan   not in this build (cargo build --features vulkan)");
    #[cfg(feature = "cuda")]
    list(DeviceChoice::Cuda, DeviceType::Cuda);
    #[cfg(not(feature = "cuda"))]
    println!("cuda     not in this build (cargo build --features cuda)");
    Ok(())
}

/// The devices of one runtime; a runtime that finds none (no driver, no GPU) says so instead of failing.
fn list(choice: DeviceChoice, kind: DeviceType) {
    // Opening a device can panic inside the runtime when the driver is missing or broken.
    let found = std::panic::catch_unwind(|| {
        let default = choice.device().ok();
        Device::enumerate(kind)
            .into_iter()
            .map(|d: Device| (describe(&d), default.as_ref() == Some(&d)))
            .collect::<Vec<(String, bool)>>()
    });
    match found {
        Ok(names) if names.is_empty() => println!("{:<8} none found", choice.name()),
        Ok(names) => {
            for (i, (name, default)) in names.iter().enumerate() {
                let default =
                    if *default { format!("  (what --device {} opens)", choice.name()) } else { String::new() };
                println!("{:<8} #{i} {name}{default}", choice.name());
            }
        }
        Err(_) => println!("{:<8} unavailable (the runtime could not open its devices)", choice.name()),
    }
}

fn describe(device: &Device) -> String {
    match device.identity() {
        Some(id) => match id.physical {
            Some(_) => id.name,
            None => format!("{} (software)", id.name),
        },
        None => format!("{device:?}"),
    }
}
