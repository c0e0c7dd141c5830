//! A device's measured limits: the ceilings `npurt bench` states a backend's speed as a
//! fraction of, measured in the same run by microbenchmark kernels.

/// What a device's microbenchmarks measured.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceLimits {
    /// How the kernels were timed, e.g. "GPU timestamps" or "host clock".
    pub timed_by: &'static str,
    /// Bytes read plus bytes written per second by a copy kernel, in GB/s.
    pub copy_gb_s: f64,
    /// Arithmetic peaks, one per instruction the kernels use.
    pub peaks: Vec<Peak>,
}

/// The peak rate of one kind of arithmetic.
#[derive(Clone, Debug, PartialEq)]
pub struct Peak {
    /// e.g. `f32 fma`, `f16 fma`, `i8 dot4`.
    pub arithmetic: &'static str,
    /// Operations per second (a multiply-add counts 2).
    pub ops_per_s: f64,
}

impl DeviceLimits {
    /// The peak of `arithmetic`, if it was measured.
    pub fn peak(&self, arithmetic: &str) -> Option<f64> {
        self.peaks
            .iter()
            .find(|p| p.arithmetic == arithmetic)
            .map(|p| p.ops_per_s)
    }

    /// One line, e.g. `copy 3.1 TB/s (read + write); f32 fma 51.2 TFLOP/s; ...`.
    pub fn summary(&self) -> String {
        let mut s = format!("copy {:.1} GB/s (read + write)", self.copy_gb_s);
        for p in &self.peaks {
            s.push_str(&format!(
                "; {} {:.2} Tops/s",
                p.arithmetic,
                p.ops_per_s / 1e12
            ));
        }
        s.push_str(&format!("; timed by {}", self.timed_by));
        s
    }
}
