//! The fields of the `Microsoft-Windows-Kernel-Process` events DaemonEye
//! reads, with the provider manifest's names and types, and their decoding
//! into typed structs. Pure: compiled and tested on every OS.
//!
//! The binding reads each field listed in [`PROCESS_START_FIELDS`] /
//! [`PROCESS_STOP_FIELDS`] with its manifest type through TDH (ferrisetw's
//! `Parser`) into a [`RawEvent`]; [`ProcessStart::decode`] and
//! [`ProcessStop::decode`] then check it. Fields that older versions of an
//! event lack (`ProcessTokenElevationType` appeared in version 3 of
//! `ProcessStart`) decode to `None`; a required field that is missing or has
//! the wrong type is a [`FieldError`] naming the event and the field.

/// Event id of `ProcessStart` (task `ProcessStart`, opcode `win:Start`).
pub const EVENT_PROCESS_START: u16 = 1;
/// Event id of `ProcessStop` (task `ProcessStop`, opcode `win:Stop`).
pub const EVENT_PROCESS_STOP: u16 = 2;
/// The provider's GUID.
pub const PROVIDER_GUID: &str = "22fb2cd6-0e7b-422b-a0c7-2fad1fd0e716";
/// The provider's name.
pub const PROVIDER_NAME: &str = "Microsoft-Windows-Kernel-Process";
/// `WINEVENT_KEYWORD_PROCESS`: process start and stop only (no threads,
/// images or priorities).
pub const KEYWORD_PROCESS: u64 = 0x10;

/// A manifest input type (`win:UInt32`, `win:FILETIME`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// `win:UInt32`.
    U32,
    /// `win:UInt64`.
    U64,
    /// `win:FILETIME`: 100 ns intervals since 1601-01-01 UTC.
    FileTime,
    /// `win:UnicodeString` (UTF-16) or `win:AnsiString`.
    Str,
}

/// One decoded field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    /// `win:UInt32`.
    U32(u32),
    /// `win:UInt64`.
    U64(u64),
    /// `win:FILETIME`, as the raw 100 ns count since 1601.
    FileTime(i64),
    /// A string.
    Str(String),
}

/// One event as read from ETW: its id, version and the fields found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawEvent {
    /// The event id (1 = `ProcessStart`, 2 = `ProcessStop`).
    pub event_id: u16,
    /// The event version from the header.
    pub version: u8,
    /// The fields present, by manifest name.
    pub fields: Vec<(String, FieldValue)>,
}

impl RawEvent {
    /// An event with no fields yet.
    pub fn new(event_id: u16, version: u8) -> Self {
        Self { event_id, version, fields: Vec::new() }
    }

    /// Adds a field (builder style, for fixtures and the binding).
    #[must_use]
    pub fn with(mut self, name: &str, value: FieldValue) -> Self {
        self.fields.push((name.to_owned(), value));
        self
    }

    fn get(&self, name: &str) -> Option<&FieldValue> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// `ProcessStart` fields read, with their manifest types (version 3 of the
/// event; versions 0-2 lack the token and sequence fields).
pub const PROCESS_START_FIELDS: &[(&str, FieldType)] = &[
    ("ProcessID", FieldType::U32),
    ("ProcessSequenceNumber", FieldType::U64),
    ("CreateTime", FieldType::FileTime),
    ("ParentProcessID", FieldType::U32),
    ("ParentProcessSequenceNumber", FieldType::U64),
    ("SessionID", FieldType::U32),
    ("Flags", FieldType::U32),
    ("ProcessTokenElevationType", FieldType::U32),
    ("ProcessTokenIsElevated", FieldType::U32),
    ("ImageName", FieldType::Str),
    ("PackageFullName", FieldType::Str),
];

/// `ProcessStop` fields read, with their manifest types (version 2).
pub const PROCESS_STOP_FIELDS: &[(&str, FieldType)] = &[
    ("ProcessID", FieldType::U32),
    ("ProcessSequenceNumber", FieldType::U64),
    ("CreateTime", FieldType::FileTime),
    ("ExitTime", FieldType::FileTime),
    ("ExitCode", FieldType::U32),
    ("TokenElevationType", FieldType::U32),
    ("ImageName", FieldType::Str),
];

/// A `ProcessStart` event (id 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStart {
    /// `ProcessID` (UInt32).
    pub process_id: u32,
    /// `ProcessSequenceNumber` (UInt64, v3+): unique per boot.
    pub process_sequence_number: Option<u64>,
    /// `CreateTime` (FILETIME): the kernel's creation time of the process.
    pub create_time: i64,
    /// `ParentProcessID` (UInt32): the creator's pid.
    pub parent_process_id: Option<u32>,
    /// `SessionID` (UInt32): the terminal-services session.
    pub session_id: Option<u32>,
    /// `Flags` (UInt32).
    pub flags: Option<u32>,
    /// `ProcessTokenElevationType` (UInt32, v3+): 1 default, 2 full, 3 limited.
    pub token_elevation_type: Option<u32>,
    /// `ProcessTokenIsElevated` (UInt32, v3+): non-zero when elevated.
    pub token_is_elevated: Option<bool>,
    /// `ImageName` (UnicodeString): the image as an NT path
    /// (`\Device\HarddiskVolume3\Windows\System32\cmd.exe`).
    pub image_name: Option<String>,
    /// `PackageFullName` (UnicodeString): the UWP package, empty for none.
    pub package_full_name: Option<String>,
}

/// A `ProcessStop` event (id 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStop {
    /// `ProcessID` (UInt32).
    pub process_id: u32,
    /// `CreateTime` (FILETIME): identifies the instance with the pid.
    pub create_time: i64,
    /// `ExitTime` (FILETIME).
    pub exit_time: Option<i64>,
    /// `ExitCode` (UInt32): the `NTSTATUS` or the program's exit code.
    pub exit_code: Option<u32>,
    /// `TokenElevationType` (UInt32).
    pub token_elevation_type: Option<u32>,
    /// `ImageName` (AnsiString): the file name only (`cmd.exe`).
    pub image_name: Option<String>,
}

/// A field that is missing or does not have its manifest type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    /// The event is not the one expected.
    #[error("{provider} event id {found} (version {version}) is not {expected}")]
    WrongEvent {
        /// The provider name.
        provider: &'static str,
        /// The id found.
        found: u16,
        /// Its version.
        version: u8,
        /// What was expected.
        expected: &'static str,
    },
    /// A required field is absent.
    #[error(
        "{event} (version {version}) has no field {field}: the provider manifest changed or TDH could not decode it"
    )]
    Missing {
        /// The event name.
        event: &'static str,
        /// Its version.
        version: u8,
        /// The field name.
        field: &'static str,
    },
    /// A field has another type than the manifest's.
    #[error("{event} (version {version}) field {field} is {found:?}, expected {expected:?}")]
    WrongType {
        /// The event name.
        event: &'static str,
        /// Its version.
        version: u8,
        /// The field name.
        field: &'static str,
        /// The type expected.
        expected: FieldType,
        /// The value found.
        found: FieldValue,
    },
}

struct Reader<'a> {
    raw: &'a RawEvent,
    event: &'static str,
}

impl Reader<'_> {
    fn wrong(&self, field: &'static str, expected: FieldType, found: &FieldValue) -> FieldError {
        FieldError::WrongType { event: self.event, version: self.raw.version, field, expected, found: found.clone() }
    }

    fn u32(&self, field: &'static str) -> Result<Option<u32>, FieldError> {
        match self.raw.get(field) {
            None => Ok(None),
            Some(FieldValue::U32(v)) => Ok(Some(*v)),
            Some(other) => Err(self.wrong(field, FieldType::U32, other)),
        }
    }

    fn u64(&self, field: &'static str) -> Result<Option<u64>, FieldError> {
        match self.raw.get(field) {
            None => Ok(None),
            Some(FieldValue::U64(v)) => Ok(Some(*v)),
            Some(other) => Err(self.wrong(field, FieldType::U64, other)),
        }
    }

    fn filetime(&self, field: &'static str) -> Result<Option<i64>, FieldError> {
        match self.raw.get(field) {
            None => Ok(None),
            Some(FieldValue::FileTime(v)) => Ok(Some(*v)),
            Some(other) => Err(self.wrong(field, FieldType::FileTime, other)),
        }
    }

    fn string(&self, field: &'static str) -> Result<Option<String>, FieldError> {
        match self.raw.get(field) {
            None => Ok(None),
            Some(FieldValue::Str(v)) => Ok(Some(v.clone())),
            Some(other) => Err(self.wrong(field, FieldType::Str, other)),
        }
    }

    fn required<T>(&self, field: &'static str, v: Option<T>) -> Result<T, FieldError> {
        v.ok_or(FieldError::Missing { event: self.event, version: self.raw.version, field })
    }

    fn expect_id(&self, id: u16) -> Result<(), FieldError> {
        if self.raw.event_id == id {
            return Ok(());
        }
        Err(FieldError::WrongEvent {
            provider: PROVIDER_NAME,
            found: self.raw.event_id,
            version: self.raw.version,
            expected: self.event,
        })
    }
}

impl ProcessStart {
    /// Checks and types a raw event 1.
    pub fn decode(raw: &RawEvent) -> Result<Self, FieldError> {
        let r = Reader { raw, event: "ProcessStart" };
        r.expect_id(EVENT_PROCESS_START)?;
        Ok(Self {
            process_id: r.required("ProcessID", r.u32("ProcessID")?)?,
            process_sequence_number: r.u64("ProcessSequenceNumber")?,
            create_time: r.required("CreateTime", r.filetime("CreateTime")?)?,
            parent_process_id: r.u32("ParentProcessID")?,
            session_id: r.u32("SessionID")?,
            flags: r.u32("Flags")?,
            token_elevation_type: r.u32("ProcessTokenElevationType")?,
            token_is_elevated: r.u32("ProcessTokenIsElevated")?.map(|v| v != 0),
            image_name: r.string("ImageName")?.filter(|s| !s.is_empty()),
            package_full_name: r.string("PackageFullName")?.filter(|s| !s.is_empty()),
        })
    }
}

impl ProcessStop {
    /// Checks and types a raw event 2.
    pub fn decode(raw: &RawEvent) -> Result<Self, FieldError> {
        let r = Reader { raw, event: "ProcessStop" };
        r.expect_id(EVENT_PROCESS_STOP)?;
        Ok(Self {
            process_id: r.required("ProcessID", r.u32("ProcessID")?)?,
            create_time: r.required("CreateTime", r.filetime("CreateTime")?)?,
            exit_time: r.filetime("ExitTime")?,
            exit_code: r.u32("ExitCode")?,
            token_elevation_type: r.u32("TokenElevationType")?,
            image_name: r.string("ImageName")?.filter(|s| !s.is_empty()),
        })
    }
}
