//! Adapter choice and device creation.

use anyhow::{bail, Context, Result};

/// What a missing GPU needs, in one line.
pub const NO_ADAPTER: &str =
    "no Vulkan/Metal/DX12 adapter found (install mesa-vulkan-drivers for software Vulkan)";

/// The device, its queue and what we know about the adapter behind it.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
}

impl Gpu {
    /// Opens the best adapter: a discrete GPU before an integrated one before anything else;
    /// a software rasterizer (lavapipe, `DeviceType::Cpu`) only when `allow_software`.
    pub fn open(allow_software: bool) -> Result<Gpu> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let best = adapters
            .into_iter()
            .filter(|a| supports_compute(a))
            .min_by_key(|a| rank(a.get_info().device_type));
        let Some(adapter) = best else {
            bail!("{NO_ADAPTER}");
        };
        let info = adapter.get_info();
        if !allow_software && info.device_type == wgpu::DeviceType::Cpu {
            bail!(
                "only a software adapter was found ({}), not a GPU",
                info.name
            );
        }
        // Ask for everything the adapter offers: the default limits (128 MiB bindings, 16 KiB
        // workgroup memory) are a floor, and larger bindings mean fewer weight chunks.
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("marco"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .with_context(|| format!("opening GPU device {}", info.name))?;
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
        })
    }

    /// "NVIDIA GeForce RTX 4090, vulkan" or "llvmpipe (LLVM 15.0.6, 256 bits), vulkan, software".
    pub fn describe(&self) -> String {
        let software = if self.info.device_type == wgpu::DeviceType::Cpu {
            ", software"
        } else {
            ""
        };
        format!("{}, {:?}{software}", self.info.name, self.info.backend).to_lowercase()
    }

    /// Largest storage binding (and buffer) this device takes, rounded down to whole words.
    pub fn max_binding_bytes(&self) -> u64 {
        let l = &self.limits;
        l.max_storage_buffer_binding_size.min(l.max_buffer_size) & !3
    }

    /// Dispatch size cap per dimension.
    pub fn max_groups_per_dim(&self) -> u32 {
        self.limits.max_compute_workgroups_per_dimension
    }
}

/// The kernels need 256-thread workgroups and five storage bindings per stage.
fn supports_compute(a: &wgpu::Adapter) -> bool {
    let l = a.limits();
    l.max_compute_invocations_per_workgroup >= 256
        && l.max_compute_workgroup_size_x >= 256
        && l.max_storage_buffers_per_shader_stage >= 5
        && l.max_compute_workgroup_storage_size >= 4096
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}
