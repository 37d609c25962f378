//! The compute kernels: WGSL sources, their bindings, and the pipeline cache.
//!
//! Every kernel takes its small parameters from binding 0, a uniform slot at a dynamic offset
//! (see `recorder`), and its buffers from storage bindings 1.. in the order of `bindings()`.
//! Pipelines are compiled on first use (only the weight formats a model has are ever built)
//! and kept for the backend's life.

use std::collections::HashMap;

use super::weights::Format;

const COMMON: &str = include_str!("../../../shaders/quant/common.wgsl");
const MATMUL: &str = include_str!("../../../shaders/matmul.wgsl");
const EMBED: &str = include_str!("../../../shaders/embed.wgsl");
const NORM: &str = include_str!("../../../shaders/norm.wgsl");
const ROPE: &str = include_str!("../../../shaders/rope.wgsl");
const ATTENTION: &str = include_str!("../../../shaders/attention.wgsl");
const ELEMENTWISE: &str = include_str!("../../../shaders/elementwise.wgsl");
const ARGMAX: &str = include_str!("../../../shaders/argmax.wgsl");

/// Bytes of parameters a kernel may take (16 words).
pub const PARAM_BYTES: u64 = 64;

/// How a kernel uses a storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

use Access::{Read, ReadWrite};

/// One compute kernel (one pipeline).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Bindings: weight chunk, x, bias, y. Several rows of one token per workgroup.
    Matvec(Format),
    /// Bindings: weight chunk, x, bias, y. A tile of tokens, one row per thread.
    Matmul(Format),
    /// Bindings: weight chunk, x, bias, y. One row of one token per thread (software).
    MatmulRows(Format),
    /// Bindings: table chunk, ids, y.
    Embed(Format),
    /// Bindings: x, gain, y.
    RmsNorm,
    /// Bindings: cos/sin table, x (in place).
    Rope,
    /// Bindings: q, K cache, V cache, out.
    Attention,
    /// Bindings: gate, up, out.
    Swiglu,
    /// Bindings: x, partials.
    ArgmaxPartial,
    /// Bindings: partials, result.
    ArgmaxFinal,
}

impl Kernel {
    /// The storage bindings as (binding number, access), in the order buffers are passed.
    pub fn bindings(self) -> &'static [(u32, Access)] {
        match self {
            Kernel::Matvec(_) | Kernel::Matmul(_) | Kernel::MatmulRows(_) | Kernel::Attention => {
                &[(1, Read), (2, Read), (3, Read), (4, ReadWrite)]
            }
            Kernel::Embed(_) | Kernel::RmsNorm | Kernel::Swiglu => {
                &[(1, Read), (2, Read), (3, ReadWrite)]
            }
            Kernel::Rope => &[(1, Read), (2, ReadWrite)],
            Kernel::ArgmaxPartial => &[(1, Read), (2, ReadWrite)],
            Kernel::ArgmaxFinal => &[(2, ReadWrite), (3, ReadWrite)],
        }
    }

    fn entry_point(self) -> &'static str {
        match self {
            Kernel::Matvec(_) => "matvec",
            Kernel::Matmul(_) => "matmul",
            Kernel::MatmulRows(_) => "matmul_rows",
            Kernel::Embed(_) => "main",
            Kernel::RmsNorm => "rms_norm",
            Kernel::Rope => "rope",
            Kernel::Attention => "attention",
            Kernel::Swiglu => "swiglu",
            Kernel::ArgmaxPartial => "partial",
            Kernel::ArgmaxFinal => "final_pass",
        }
    }

    /// The module source: the weight kernels are the format's dequantizer plus the kernel.
    fn source(self) -> String {
        match self {
            Kernel::Matvec(f) | Kernel::Matmul(f) | Kernel::MatmulRows(f) => {
                [COMMON, f.shader(), MATMUL].join("\n")
            }
            Kernel::Embed(f) => [COMMON, f.shader(), EMBED].join("\n"),
            Kernel::RmsNorm => NORM.to_string(),
            Kernel::Rope => ROPE.to_string(),
            Kernel::Attention => ATTENTION.to_string(),
            Kernel::Swiglu => ELEMENTWISE.to_string(),
            Kernel::ArgmaxPartial | Kernel::ArgmaxFinal => ARGMAX.to_string(),
        }
    }
}

/// A compiled kernel.
pub struct Compiled {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// Pipelines by kernel, compiled once.
#[derive(Default)]
pub struct Pipelines {
    map: HashMap<Kernel, Compiled>,
}

impl Pipelines {
    /// The pipeline of `kernel`, compiling it on first use.
    pub fn get(&mut self, device: &wgpu::Device, kernel: Kernel) -> &Compiled {
        self.map
            .entry(kernel)
            .or_insert_with(|| compile(device, kernel))
    }
}

fn compile(device: &wgpu::Device, kernel: Kernel) -> Compiled {
    let label = format!("{kernel:?}");
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(&label),
        source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
    });
    let layout = bind_group_layout(device, kernel, &label);
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&label),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&label),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(kernel.entry_point()),
        compilation_options: Default::default(),
        cache: None,
    });
    Compiled { pipeline, layout }
}

fn bind_group_layout(device: &wgpu::Device, kernel: Kernel, label: &str) -> wgpu::BindGroupLayout {
    let params = wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: wgpu::BufferSize::new(PARAM_BYTES),
        },
        count: None,
    };
    let storage = kernel
        .bindings()
        .iter()
        .map(|&(binding, access)| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage {
                    read_only: access == Read,
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    let entries: Vec<_> = std::iter::once(params).chain(storage).collect();
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    })
}
