//! Exceptions as values: instruction code returns `Err(Fault)` and the step loop delivers it.

/// Architectural exception vectors.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exception {
    DivideError = 0,
    Debug = 1,
    Nmi = 2,
    Breakpoint = 3,
    Overflow = 4,
    BoundRange = 5,
    InvalidOpcode = 6,
    DeviceNotAvailable = 7,
    DoubleFault = 8,
    InvalidTss = 10,
    SegmentNotPresent = 11,
    StackFault = 12,
    GeneralProtection = 13,
    PageFault = 14,
    FloatingPoint = 16,
    AlignmentCheck = 17,
    MachineCheck = 18,
    SimdFloatingPoint = 19,
}

/// An exception raised by an instruction, with what delivery needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The vector.
    pub exception: Exception,
    /// The error code, for the vectors that push one.
    pub error_code: Option<u32>,
    /// For page faults: the linear address that faulted (goes to CR2).
    pub address: Option<u64>,
}

impl Fault {
    /// A fault without an error code.
    pub const fn new(exception: Exception) -> Self {
        Self {
            exception,
            error_code: None,
            address: None,
        }
    }
    /// A fault with an error code.
    pub const fn with_code(exception: Exception, code: u32) -> Self {
        Self {
            exception,
            error_code: Some(code),
            address: None,
        }
    }
    /// #GP(code).
    pub const fn gp(code: u32) -> Self {
        Self::with_code(Exception::GeneralProtection, code)
    }
    /// #UD.
    pub const fn ud() -> Self {
        Self::new(Exception::InvalidOpcode)
    }
    /// #PF at `address` with `code`.
    pub const fn page(address: u64, code: u32) -> Self {
        Self {
            exception: Exception::PageFault,
            error_code: Some(code),
            address: Some(address),
        }
    }
    /// #SS(code).
    pub const fn ss(code: u32) -> Self {
        Self::with_code(Exception::StackFault, code)
    }
}

/// Result of anything that may raise an exception.
pub type Result<T> = core::result::Result<T, Fault>;
