//! Recording and submitting work: the buffer table, the parameter ring, cached bind groups,
//! one command encoder per batch of ops, and read-back through a staging buffer.
//!
//! Ops are only recorded; nothing reaches the GPU until a read (or a full parameter ring)
//! submits the batch, so a whole forward step is one submission. Each dispatch's parameters
//! go to their own slot of a uniform ring buffer, addressed by a dynamic offset: a single
//! uniform rewritten per op would not work, because all ops of a batch run after all of the
//! batch's writes. The ring's contents are written just before the submission. (`embed` also
//! submits what is pending before it rewrites the token ids, for the same reason.)

use std::collections::HashMap;
use std::sync::mpsc;

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::context::Gpu;
use super::kernels::{Kernel, Pipelines, PARAM_BYTES};

/// Parameter slots per submission; a batch with more dispatches is submitted in parts.
const PARAM_SLOTS: u64 = 2048;

/// Most buffers one kernel binds.
const MAX_BINDINGS: usize = 4;

pub struct Recorder {
    pub gpu: Gpu,
    bufs: Vec<wgpu::Buffer>,
    pipelines: Pipelines,
    bind_groups: HashMap<(Kernel, [usize; MAX_BINDINGS]), wgpu::BindGroup>,
    encoder: Option<wgpu::CommandEncoder>,
    /// The open compute pass of `encoder`: consecutive dispatches share one pass (a pass per
    /// dispatch costs wgpu several microseconds of CPU time each, hundreds of times a token).
    /// wgpu still places the barriers between dispatches that read what an earlier one wrote.
    pass: Option<wgpu::ComputePass<'static>>,
    params: wgpu::Buffer,
    param_data: Vec<u8>,
    slot_bytes: u64,
    staging: Option<wgpu::Buffer>,
    /// Per-dispatch wall times when `MARCO_GPU_PROFILE` is set (see [`Profile`]).
    profile: Option<Profile>,
}

/// A developer's view of where GPU time goes, without timestamp queries (which not every
/// adapter offers): with `MARCO_GPU_PROFILE=1` every dispatch is submitted and waited for on
/// its own, and its wall time is added to its kernel and grid. The totals include one
/// submission's latency per dispatch, so they overstate small kernels; the ranking is what
/// counts. Printed to stderr when the backend is dropped.
#[derive(Default)]
struct Profile {
    /// (kernel and grid) -> (dispatches, seconds).
    by_kernel: HashMap<String, (u64, f64)>,
}

impl Profile {
    fn from_env() -> Option<Profile> {
        std::env::var_os("MARCO_GPU_PROFILE")
            .filter(|v| !v.is_empty() && v != "0")
            .map(|_| Profile::default())
    }

    fn report(&self) {
        let mut rows: Vec<_> = self.by_kernel.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let total: f64 = rows.iter().map(|r| r.1 .1).sum();
        eprintln!("GPU profile (each dispatch submitted and waited for alone): {total:.3} s");
        for (name, (n, secs)) in rows {
            eprintln!(
                "{:>9.3} ms {:>5.1}% {:>8} x {:>8.1} us  {name}",
                secs * 1e3,
                100.0 * secs / total.max(1e-12),
                n,
                secs * 1e6 / *n as f64
            );
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            p.report();
        }
    }
}

impl Recorder {
    pub fn new(gpu: Gpu) -> Recorder {
        let align = u64::from(gpu.limits.min_uniform_buffer_offset_alignment);
        let slot_bytes = PARAM_BYTES.div_ceil(align) * align;
        let params = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: slot_bytes * PARAM_SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Recorder {
            gpu,
            bufs: Vec::new(),
            pipelines: Pipelines::default(),
            bind_groups: HashMap::new(),
            encoder: None,
            pass: None,
            params,
            param_data: Vec::with_capacity((slot_bytes * PARAM_SLOTS) as usize),
            slot_bytes,
            staging: None,
            profile: Profile::from_env(),
        }
    }

    /// Adds a buffer to the table; the index names it from now on.
    pub fn add(&mut self, buffer: wgpu::Buffer) -> usize {
        self.bufs.push(buffer);
        self.bufs.len() - 1
    }

    /// A new zeroed buffer of `bytes` (at least 4) for kernels and copies.
    pub fn create(&mut self, label: &str, bytes: u64, usage: wgpu::BufferUsages) -> Result<usize> {
        ensure!(
            bytes <= self.gpu.max_binding_bytes(),
            "a {label} buffer of {bytes} bytes exceeds the GPU's largest binding ({} bytes)",
            self.gpu.max_binding_bytes()
        );
        let buffer = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4).next_multiple_of(4),
            usage,
            mapped_at_creation: false,
        });
        Ok(self.add(buffer))
    }

    /// Replaces buffer `index` (to grow it); pending work keeps the old one alive.
    pub fn replace(&mut self, index: usize, buffer: wgpu::Buffer) {
        self.bufs[index] = buffer;
        self.bind_groups.retain(|(_, res), _| !res.contains(&index));
    }

    /// Writes `data` into buffer `index` at `offset`; the write lands before the next
    /// submission, so callers flush first if recorded work still reads the old contents.
    pub fn write(&mut self, index: usize, offset: u64, data: &[u8]) {
        self.gpu.queue.write_buffer(&self.bufs[index], offset, data);
    }

    /// The encoder, with no compute pass open (copies are recorded outside passes).
    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        let device = &self.gpu.device;
        self.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            })
        })
    }

    /// Records `kernel` over `groups` workgroups (spread over x and y when above the
    /// per-dimension cap) times `z`, binding `res` and parameter words `params`.
    pub fn dispatch(
        &mut self,
        kernel: Kernel,
        res: &[usize],
        params: &[u32],
        groups: u32,
        z: u32,
    ) -> Result<()> {
        if groups == 0 || z == 0 {
            return Ok(());
        }
        let started = match self.profile {
            Some(_) => Some(self.settle()?),
            None => None,
        };
        let (x, y) = self.grid(groups)?;
        let offset = self.push_params(params)?;
        let key = self.bind_group(kernel, res)?;
        let compiled = self.pipelines.get(&self.gpu.device, kernel);
        let pipeline = compiled.pipeline.clone();
        let bind_group = self.bind_groups[&key].clone();
        let pass = self.pass()?;
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[offset]);
        pass.dispatch_workgroups(x, y, z);
        if let Some(started) = started {
            self.settle()?;
            let secs = started.elapsed().as_secs_f64();
            if let Some(p) = &mut self.profile {
                let e = p
                    .by_kernel
                    .entry(format!("{kernel:?} {x}x{y}x{z}"))
                    .or_default();
                e.0 += 1;
                e.1 += secs;
            }
        }
        Ok(())
    }

    /// Submits what is recorded and waits until the GPU is idle (profiling only).
    fn settle(&mut self) -> Result<std::time::Instant> {
        self.flush();
        self.gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow!("GPU: {e}"))?;
        Ok(std::time::Instant::now())
    }

    /// The open compute pass, begun on the encoder when none is.
    fn pass(&mut self) -> Result<&mut wgpu::ComputePass<'static>> {
        if self.pass.is_none() {
            let pass = self
                .encoder()
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: None,
                })
                .forget_lifetime();
            self.pass = Some(pass);
        }
        self.pass
            .as_mut()
            .ok_or_else(|| anyhow!("internal: no compute pass"))
    }

    /// Records a copy of `bytes` from `src` at `src_off` to `dst` at `dst_off`.
    pub fn copy(&mut self, src: usize, src_off: u64, dst: usize, dst_off: u64, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let (s, d) = (self.bufs[src].clone(), self.bufs[dst].clone());
        self.encoder()
            .copy_buffer_to_buffer(&s, src_off, &d, dst_off, bytes);
    }

    /// Submits everything recorded so far (without waiting for it).
    pub fn flush(&mut self) {
        self.pass = None;
        let Some(encoder) = self.encoder.take() else {
            return;
        };
        if !self.param_data.is_empty() {
            self.gpu
                .queue
                .write_buffer(&self.params, 0, &self.param_data);
            self.param_data.clear();
        }
        self.gpu.queue.submit([encoder.finish()]);
    }

    /// Runs everything recorded and reads `dst.len()` bytes of buffer `src` from `offset`.
    pub fn read(&mut self, src: usize, offset: u64, dst: &mut [u8]) -> Result<()> {
        let bytes = dst.len() as u64;
        if bytes == 0 {
            return Ok(());
        }
        let staging = self.staging_for(bytes);
        let source = self.bufs[src].clone();
        self.encoder()
            .copy_buffer_to_buffer(&source, offset, &staging, 0, bytes);
        self.flush();
        let slice = staging.slice(..bytes);
        let (tx, rx) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow!("GPU: {e}"))?;
        rx.recv()
            .context("GPU: the read-back never completed")?
            .map_err(|e| anyhow!("GPU: mapping the read-back buffer: {e}"))?;
        {
            let view = slice.get_mapped_range().map_err(|e| anyhow!("GPU: {e}"))?;
            dst.copy_from_slice(&view);
        }
        staging.unmap();
        Ok(())
    }

    /// The staging buffer, grown (to a power of two) when `bytes` do not fit.
    fn staging_for(&mut self, bytes: u64) -> wgpu::Buffer {
        match &self.staging {
            Some(s) if s.size() >= bytes => s.clone(),
            _ => {
                let s = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("read-back"),
                    size: bytes.next_power_of_two().max(256),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.staging = Some(s.clone());
                s
            }
        }
    }

    /// Workgroups as (x, y) with x within the per-dimension cap.
    fn grid(&self, groups: u32) -> Result<(u32, u32)> {
        let cap = self.gpu.max_groups_per_dim();
        let x = groups.min(cap);
        let y = groups.div_ceil(x);
        ensure!(
            y <= cap,
            "internal: {groups} workgroups exceed the GPU's dispatch limits"
        );
        Ok((x, y))
    }

    /// Appends a parameter slot (submitting first if the ring is full); returns its offset.
    fn push_params(&mut self, params: &[u32]) -> Result<u32> {
        ensure!(
            params.len() * 4 <= PARAM_BYTES as usize,
            "internal: too many kernel parameters"
        );
        if self.param_data.len() as u64 >= self.slot_bytes * PARAM_SLOTS {
            self.flush();
        }
        let offset = self.param_data.len();
        self.param_data.resize(offset + self.slot_bytes as usize, 0);
        for (i, w) in params.iter().enumerate() {
            self.param_data[offset + 4 * i..offset + 4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        Ok(offset as u32)
    }

    /// The cached bind group of `kernel` over `res`, created on first use.
    fn bind_group(
        &mut self,
        kernel: Kernel,
        res: &[usize],
    ) -> Result<(Kernel, [usize; MAX_BINDINGS])> {
        let bindings = kernel.bindings();
        if res.len() != bindings.len() {
            bail!("internal: {kernel:?} takes {} buffers", bindings.len());
        }
        let mut key = [usize::MAX; MAX_BINDINGS];
        key[..res.len()].copy_from_slice(res);
        if self.bind_groups.contains_key(&(kernel, key)) {
            return Ok((kernel, key));
        }
        let layout = &self.pipelines.get(&self.gpu.device, kernel).layout;
        let params = wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.params,
                offset: 0,
                size: wgpu::BufferSize::new(PARAM_BYTES),
            }),
        };
        let storage = bindings
            .iter()
            .zip(res)
            .map(|(&(binding, _), &r)| wgpu::BindGroupEntry {
                binding,
                resource: self.bufs[r].as_entire_binding(),
            });
        let entries: Vec<_> = std::iter::once(params).chain(storage).collect();
        let group = self
            .gpu
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout,
                entries: &entries,
            });
        self.bind_groups.insert((kernel, key), group);
        Ok((kernel, key))
    }
}
