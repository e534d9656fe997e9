//! The CUDA counterparts of the CPU kernels.
//!
//! The CUDA C sources in `kernels/cuda/` are compiled at run time by NVRTC and launched through
//! cudarc's driver API. Both libraries (`libcuda`, `libnvrtc`) are loaded dynamically when first
//! used, so the crate builds, and everything but the launches runs, on machines without CUDA:
//! [`driver_available`] and [`nvrtc_available`] say what is there before anything is called
//! that would need it.
//!
//! Every launcher takes a [`Gpu`] (a context, one stream and the compiled modules) and device
//! buffers, checks the shapes it is given and returns [`GpuError`] instead of launching on a
//! mismatch. Activations are `f32`; weights are in the formats of [`crate::quant`].

pub mod attention;
pub mod fused;
pub mod lora;
pub mod quant;
pub mod sampling;
pub mod sparse;

use std::{
	collections::HashMap,
	sync::{Arc, Mutex},
};

pub use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::{
	driver::{sys::CUdevice_attribute, CudaContext, CudaFunction, CudaModule, DriverError},
	nvrtc::{CompileError, CompileOptions, Ptx},
};

/// What went wrong on the GPU side.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
	/// `libcuda` could not be loaded: no NVIDIA driver here.
	#[error("no CUDA driver (libcuda.so) could be loaded on this machine")]
	NoDriver,
	/// The driver is there but reports no device.
	#[error("the CUDA driver reports no device")]
	NoDevice,
	/// `libnvrtc` could not be loaded.
	#[error(
		"no NVRTC library (libnvrtc.so.12) could be loaded; put the folder holding it on \
		 LD_LIBRARY_PATH (scripts/fetch-nvrtc.sh fetches one)"
	)]
	NoNvrtc,
	/// A driver call failed.
	#[error("CUDA driver: {0}")]
	Driver(#[from] DriverError),
	/// NVRTC refused a source.
	#[error("NVRTC could not compile {source_name}.cu: {log}")]
	Compile {
		/// Which source.
		source_name: &'static str,
		/// NVRTC's log, or the error when there is no log.
		log: String,
	},
	/// The buffers given to a launcher do not fit the shapes it was told.
	#[error("kernel shapes: {0}")]
	Shape(String),
}

/// One CUDA C source file, compiled as one module.
#[derive(Clone, Copy, Debug)]
pub struct Source {
	/// Its name (the file stem).
	pub name: &'static str,
	/// Its text.
	pub code: &'static str,
}

/// Paged decode attention and flash-style prefill.
pub const ATTENTION: Source =
	Source { name: "attention", code: include_str!("../../cuda/attention.cu") };
/// Fused RMSNorm, RoPE, SiLU-and-multiply and residual add.
pub const FUSED: Source = Source { name: "fused", code: include_str!("../../cuda/fused.cu") };
/// Multi-LoRA shrink and expand over a paged adapter pool.
pub const LORA: Source = Source { name: "lora", code: include_str!("../../cuda/lora.cu") };
/// Quantized matrix-vector and matrix-matrix products.
pub const QUANT: Source = Source { name: "quant", code: include_str!("../../cuda/quant.cu") };
/// On-device min-p / top-k / top-p sampling.
pub const SAMPLING: Source =
	Source { name: "sampling", code: include_str!("../../cuda/sampling.cu") };
/// The activation-sparse FFN path.
pub const SPARSE: Source = Source { name: "sparse", code: include_str!("../../cuda/sparse.cu") };

/// What every source needs: prepended to each before compiling (`kernels/cuda/common.cuh`).
pub const COMMON: &str = include_str!("../../cuda/common.cuh");

/// Every source, in the order they are compiled.
pub const SOURCES: [Source; 6] = [ATTENTION, FUSED, LORA, QUANT, SAMPLING, SPARSE];

/// How the CUDA emulator's device name begins (`kernels/emulator/driver.cpp`).
pub const EMULATOR_NAME: &str = "OpenLedger CUDA emulator";

/// Whether `libcuda` can be loaded.
pub fn driver_available() -> bool {
	// SAFETY: only tries to open the library; nothing is called through it.
	unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether `libnvrtc` can be loaded.
pub fn nvrtc_available() -> bool {
	// SAFETY: only tries to open the library; nothing is called through it.
	unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The virtual architecture the sources are compiled for when no device says otherwise:
/// Ampere, the oldest generation the kernels are written for (PTX for it runs on later ones).
pub const BASELINE_ARCH: &str = "compute_80";

/// The NVRTC `--gpu-architecture` for a device of compute capability `major.minor`.
pub fn arch_for(major: i32, minor: i32) -> &'static str {
	match (major, minor) {
		(8, 0) => "sm_80",
		(8, 6) => "sm_86",
		(8, 7) => "sm_87",
		(8, 9) => "sm_89",
		(9, 0) => "sm_90",
		(10, 0) => "sm_100",
		(12, 0) => "sm_120",
		_ => BASELINE_ARCH,
	}
}

/// Compiles `source` to PTX for `arch` (for example `"sm_90"` or [`BASELINE_ARCH`]).
pub fn compile(source: &Source, arch: &'static str) -> Result<Ptx, GpuError> {
	if !nvrtc_available() {
		return Err(GpuError::NoNvrtc);
	}
	let options = CompileOptions {
		arch: Some(arch),
		name: Some(format!("{}.cu", source.name)),
		// Exact division and square roots: the CPU references are compared with tolerances
		// that assume IEEE results, and these kernels are bandwidth-bound anyway.
		prec_div: Some(true),
		prec_sqrt: Some(true),
		options: vec!["--std=c++17".into()],
		..Default::default()
	};
	let code = format!("{COMMON}\n{}", source.code);
	cudarc::nvrtc::compile_ptx_with_opts(code, options).map_err(|e| GpuError::Compile {
		source_name: source.name,
		log: match e {
			CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
			other => format!("{other:?}"),
		},
	})
}

/// A CUDA device with one stream and the modules compiled for it so far.
pub struct Gpu {
	ctx: Arc<CudaContext>,
	stream: Arc<CudaStream>,
	arch: &'static str,
	modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
}

impl std::fmt::Debug for Gpu {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		f.debug_struct("Gpu")
			.field("ordinal", &self.ctx.ordinal())
			.field("arch", &self.arch)
			.finish_non_exhaustive()
	}
}

impl Gpu {
	/// Opens device `ordinal`.
	pub fn new(ordinal: usize) -> Result<Self, GpuError> {
		if !driver_available() {
			return Err(GpuError::NoDriver);
		}
		if !nvrtc_available() {
			return Err(GpuError::NoNvrtc);
		}
		if CudaContext::device_count()? <= ordinal as i32 {
			return Err(GpuError::NoDevice);
		}
		let ctx = CudaContext::new(ordinal)?;
		let (major, minor) = ctx.compute_capability()?;
		let stream = ctx.default_stream();
		Ok(Self { ctx, stream, arch: arch_for(major, minor), modules: Mutex::new(HashMap::new()) })
	}

	/// Device 0, or `None` when this machine has no CUDA driver or no device. A driver that is
	/// there but fails, or a missing NVRTC beside a present driver, is an error.
	pub fn first() -> Result<Option<Self>, GpuError> {
		if !driver_available() {
			return Ok(None);
		}
		match Self::new(0) {
			Ok(gpu) => Ok(Some(gpu)),
			Err(GpuError::NoDevice) => Ok(None),
			Err(e) => Err(e),
		}
	}

	/// The stream every launcher runs on.
	pub fn stream(&self) -> &Arc<CudaStream> {
		&self.stream
	}

	/// The device's name, as the driver gives it.
	pub fn name(&self) -> Result<String, GpuError> {
		Ok(self.ctx.name()?)
	}

	/// Whether this "device" is the CUDA emulator (`kernels/emulator/`, which runs the kernels
	/// on the CPU for correctness checks): its timings mean nothing, and benches refuse it.
	pub fn is_emulator(&self) -> bool {
		self.name().is_ok_and(|name| name.starts_with(EMULATOR_NAME))
	}

	/// The architecture the sources are compiled for on this device.
	pub fn arch(&self) -> &'static str {
		self.arch
	}

	/// The device's peak memory bandwidth in bytes per second, from its memory clock and bus
	/// width (double data rate).
	pub fn peak_bandwidth(&self) -> Result<f64, GpuError> {
		let clock_khz =
			self.ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)?;
		let bus_bits =
			self.ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)?;
		Ok(2.0 * f64::from(clock_khz) * 1e3 * f64::from(bus_bits) / 8.0)
	}

	/// Kernel `function` of `source`, compiling and loading the module on first use.
	pub fn function(&self, source: &Source, function: &str) -> Result<CudaFunction, GpuError> {
		let module = {
			let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
			match modules.get(source.name) {
				Some(module) => module.clone(),
				None => {
					let module = self.ctx.load_module(compile(source, self.arch)?)?;
					modules.insert(source.name, module.clone());
					module
				}
			}
		};
		Ok(module.load_function(function)?)
	}

	/// Copies `host` to a new device buffer.
	pub fn upload<T: cudarc::driver::DeviceRepr>(
		&self,
		host: &[T],
	) -> Result<CudaSlice<T>, GpuError> {
		Ok(self.stream.clone_htod(host)?)
	}

	/// Copies `device` back to the host (waiting for the stream).
	pub fn download<T: cudarc::driver::DeviceRepr>(
		&self,
		device: &CudaSlice<T>,
	) -> Result<Vec<T>, GpuError> {
		Ok(self.stream.clone_dtoh(device)?)
	}

	/// A zeroed device buffer of `len` values.
	pub fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
		&self,
		len: usize,
	) -> Result<CudaSlice<T>, GpuError> {
		Ok(self.stream.alloc_zeros(len)?)
	}

	/// A device buffer of `len` values left as the allocator hands it over (no zero-filling
	/// pass over memory): for a kernel's output that the kernel writes whole.
	///
	/// # Safety
	/// Every value must be written on the device before anything reads it.
	pub unsafe fn uninit<T: cudarc::driver::DeviceRepr>(
		&self,
		len: usize,
	) -> Result<CudaSlice<T>, GpuError> {
		// SAFETY: the caller writes every value before it is read.
		Ok(unsafe { self.stream.alloc(len) }?)
	}

	/// A page-locked host buffer of `len` values (uninitialised), from which copies to the
	/// device run at the bus's full rate.
	pub fn pinned<T: cudarc::driver::DeviceRepr>(
		&self,
		len: usize,
	) -> Result<cudarc::driver::PinnedHostSlice<T>, GpuError> {
		// SAFETY: the buffer is only handed out behind `as_mut_slice`, which callers fill before
		// they copy from it; `T: DeviceRepr` is plain data, so any bits are a valid value.
		Ok(unsafe { self.ctx.alloc_pinned_with_flags(len, 0) }?)
	}

	/// Waits for everything launched so far.
	pub fn synchronize(&self) -> Result<(), GpuError> {
		Ok(self.stream.synchronize()?)
	}
}

/// Fails with [`GpuError::Shape`] unless `buffer` holds exactly `len` values.
pub(crate) fn expect_len<T>(what: &str, buffer: &CudaSlice<T>, len: usize) -> Result<(), GpuError> {
	if buffer.len() == len {
		Ok(())
	} else {
		Err(GpuError::Shape(format!("{what} has {} values, expected {len}", buffer.len())))
	}
}

/// `n` as a kernel's `int` argument, or a shape error when it does not fit.
pub(crate) fn as_i32(what: &str, n: usize) -> Result<i32, GpuError> {
	i32::try_from(n).map_err(|_| GpuError::Shape(format!("{what} = {n} does not fit in an int")))
}
