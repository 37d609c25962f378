//! Adapter choice and device creation.

use std::sync::{Mutex, OnceLock};

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
        // Opening devices from several threads at once on the shared instance hung the NVIDIA
        // driver (580) seen here; opening is rare, so take turns.
        static OPENING: Mutex<()> = Mutex::new(());
        let _turn = OPENING.lock().unwrap_or_else(|e| e.into_inner());
        let adapters = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()));
        let best = adapters
            .into_iter()
            .filter(supports_compute)
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

    /// "NVIDIA H200, vulkan" or "llvmpipe (LLVM 15.0.6, 256 bits), vulkan, software".
    pub fn describe(&self) -> String {
        let software = if self.info.device_type == wgpu::DeviceType::Cpu {
            ", software"
        } else {
            ""
        };
        let api = format!("{:?}", self.info.backend).to_lowercase();
        format!("{}, {api}{software}", self.info.name)
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

/// The process's one wgpu instance. Creating a Vulkan instance per backend is slow, and a
/// driver seen here (NVIDIA 580) stopped enumerating its GPU after many in quick succession.
fn instance() -> &'static wgpu::Instance {
    static INSTANCE: OnceLock<wgpu::Instance> = OnceLock::new();
    INSTANCE.get_or_init(|| {
        wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        })
    })
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
