//! DBN records as frame payloads: the one length each record type has in DBN versions 1 to 3,
//! whether a payload is exactly one record ([`not_a_record`], said as its shape), and a safe,
//! 8-byte aligned view of one ([`AlignedRecord`], [`get`]) for the handlers and the tap. The
//! file reader (`feed::dbn_source`) checks the records it reads against the same lengths.

use dbn::{rtype, HasRType, Record, RecordHeader, RecordRef};

/// The one length a record of type `rtype` has in a DBN file of `version` (1 to 3) whose
/// metadata says `ts_out`; None for a type the `dbn` crate does not know.
///
/// In DBN versions 1 to 3 a record type has one struct per version (`dbn::v1`, `v2`, `v3`:
/// the instrument definition grew in versions 2 and 3, statistics in 3, errors, system
/// messages and symbol mappings in 2), and a record is longer than its struct in one case
/// only: the live gateway's send time, `ts_out`, 8 bytes after every record of a stream whose
/// metadata says so (`dbn::WithTsOut`). The decoder reads the file's records as they are
/// (`VersionUpgradePolicy::AsIs`), so every other length is damage. (DBN version 4 lets a
/// stream's layout extend a record with fields of its own; the decoder for versions 1 to 3
/// refuses such a file when it opens.)
pub fn record_len(version: u8, rtype: u8, ts_out: bool) -> Option<usize> {
    macro_rules! size_in {
        ($v:ident) => {{
            use dbn::$v::*;
            use std::mem::size_of;
            #[allow(deprecated)]
            let size = match rtype {
                rtype::MBO => size_of::<MboMsg>(),
                rtype::MBP_0 => size_of::<TradeMsg>(),
                rtype::MBP_1 | rtype::TBBO => size_of::<Mbp1Msg>(),
                rtype::MBP_10 => size_of::<Mbp10Msg>(),
                rtype::BBO_1S | rtype::BBO_1M => size_of::<BboMsg>(),
                rtype::CMBP_1 | rtype::TCBBO => size_of::<Cmbp1Msg>(),
                rtype::CBBO_1S | rtype::CBBO_1M => size_of::<CbboMsg>(),
                rtype::OHLCV_DEPRECATED
                | rtype::OHLCV_1S
                | rtype::OHLCV_1M
                | rtype::OHLCV_1H
                | rtype::OHLCV_1D
                | rtype::OHLCV_EOD => size_of::<OhlcvMsg>(),
                rtype::STATUS => size_of::<StatusMsg>(),
                rtype::INSTRUMENT_DEF => size_of::<InstrumentDefMsg>(),
                rtype::IMBALANCE => size_of::<ImbalanceMsg>(),
                rtype::STATISTICS => size_of::<StatMsg>(),
                rtype::ERROR => size_of::<ErrorMsg>(),
                rtype::SYMBOL_MAPPING => size_of::<SymbolMappingMsg>(),
                rtype::SYSTEM => size_of::<SystemMsg>(),
                _ => return None,
            };
            size
        }};
    }
    let size = match version {
        1 => size_in!(v1),
        2 => size_in!(v2),
        _ => size_in!(v3),
    };
    Some(size + if ts_out { 8 } else { 0 })
}

/// An 8-byte aligned copy of one record, so a frame's payload (at any
/// alignment) can be viewed as a `dbn` record without undefined behaviour.
#[repr(C, align(8))]
pub struct AlignedRecord {
    buf: [u8; dbn::MAX_RECORD_LEN],
}

impl Default for AlignedRecord {
    fn default() -> Self {
        AlignedRecord { buf: [0; dbn::MAX_RECORD_LEN] }
    }
}

/// Why bytes are not one DBN record ([`not_a_record`]), said as the record's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotARecord {
    /// Fewer bytes than a record header.
    Short(usize),
    /// More bytes than the largest record type.
    Long(usize),
    /// The header's length byte (× 4) is not the number of bytes.
    Length { said: usize, len: usize },
    /// A record type the `dbn` crate does not know.
    UnknownType(u8),
    /// A length that is not the type's in any DBN version 1 to 3, with or without `ts_out`
    /// ([`record_len`]).
    TypeLength { rtype: u8, len: usize },
}

impl std::fmt::Display for NotARecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header = std::mem::size_of::<RecordHeader>();
        match *self {
            NotARecord::Short(len) => write!(f, "{len} bytes, fewer than a DBN record header ({header})"),
            NotARecord::Long(len) => write!(f, "{len} bytes, more than any DBN record ({})", dbn::MAX_RECORD_LEN),
            NotARecord::Length { said, len } => {
                write!(f, "{len} bytes where its DBN header's length byte says {said}")
            }
            NotARecord::UnknownType(rt) => write!(f, "rtype 0x{rt:02x} is no DBN record type"),
            NotARecord::TypeLength { rtype, len } => {
                let name = dbn::RType::try_from(rtype).map_or("?", |t| t.as_str());
                write!(f, "{len} bytes, no length of a {name} record (rtype 0x{rtype:02x}) in DBN versions 1 to 3")
            }
        }
    }
}

/// Whether `bytes` are exactly one record (header length × 4 = size) of a type `dbn` knows, of a
/// length that type has in some DBN version (a frame's payload carries no version: any of 1 to
/// 3, with or without `ts_out`).
#[inline]
pub fn not_a_record(bytes: &[u8]) -> Option<NotARecord> {
    let len = bytes.len();
    if len < std::mem::size_of::<RecordHeader>() {
        return Some(NotARecord::Short(len));
    }
    if len > dbn::MAX_RECORD_LEN {
        return Some(NotARecord::Long(len));
    }
    if bytes[0] as usize * 4 != len {
        return Some(NotARecord::Length { said: bytes[0] as usize * 4, len });
    }
    let rtype = bytes[1];
    let Some(v3) = record_len(3, rtype, false) else {
        return Some(NotARecord::UnknownType(rtype));
    };
    // Version 3 without ts_out first: the common case costs one lookup.
    let fits = |v| record_len(v, rtype, false).is_some_and(|n| len == n || len == n + 8);
    if len == v3 || len == v3 + 8 || fits(2) || fits(1) {
        None
    } else {
        Some(NotARecord::TypeLength { rtype, len })
    }
}

impl AlignedRecord {
    /// Copy `bytes` in and view them as a record: None unless the bytes are
    /// exactly one record (header length × 4 = size) of a type `dbn` knows
    /// ([`not_a_record`] says why not).
    pub fn load(&mut self, bytes: &[u8]) -> Option<RecordRef<'_>> {
        if not_a_record(bytes).is_some() {
            return None;
        }
        let len = bytes.len();
        self.buf[..len].copy_from_slice(bytes);
        // SAFETY: the buffer is 8-byte aligned (repr(align(8))), holds `len`
        // bytes that start with a full RecordHeader whose length field equals
        // `len`; typed access goes through `get`, which checks the size.
        Some(unsafe { RecordRef::new(&self.buf[..len]) })
    }
}

/// The record as a `T` when its type matches and it is long enough (never
/// panics, unlike `RecordRef::get` on a short record).
pub fn get<'a, T: HasRType<Header = RecordHeader>>(rec: &RecordRef<'a>) -> Option<&'a T> {
    if rec.has::<T>() && rec.record_size() >= std::mem::size_of::<T>() {
        rec.get::<T>()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbn::MboMsg;
    use dbn::TradeMsg;

    #[test]
    fn aligned_view_checks_length_and_type() {
        let mbo = MboMsg { order_id: 42, ..Default::default() };
        let bytes = RecordRef::from(&mbo).as_ref().to_vec();
        let mut a = AlignedRecord::default();
        // Misaligned source: view it from an odd offset.
        let mut odd = vec![0u8];
        odd.extend_from_slice(&bytes);
        let rec = a.load(&odd[1..]).expect("a record");
        assert_eq!(get::<MboMsg>(&rec).map(|m| m.order_id), Some(42));
        assert!(get::<TradeMsg>(&rec).is_none());
        assert!(a.load(&bytes[..bytes.len() - 1]).is_none(), "short");
        assert!(a.load(&[0u8; 3]).is_none());
        let mut bad = bytes.clone();
        bad[1] = 0xEE;
        assert!(a.load(&bad).is_none(), "unknown rtype");
        assert_eq!(not_a_record(&bad), Some(NotARecord::UnknownType(0xEE)));
        assert_eq!(not_a_record(&bytes[..bytes.len() - 1]), Some(NotARecord::Length { said: 56, len: 55 }));
        assert_eq!(not_a_record(&[0u8; 3]), Some(NotARecord::Short(3)));
        assert_eq!(not_a_record(&vec![0u8; dbn::MAX_RECORD_LEN + 1]), Some(NotARecord::Long(dbn::MAX_RECORD_LEN + 1)));
        assert_eq!(not_a_record(&bytes), None);
        // Its header's length right, but no MBO is 100 bytes (a generated payload whose first
        // bytes are 25, 0xa0 would have been taken for one).
        let mut long = vec![0u8; 100];
        (long[0], long[1]) = (25, rtype::MBO);
        assert_eq!(not_a_record(&long), Some(NotARecord::TypeLength { rtype: rtype::MBO, len: 100 }));
        assert!(a.load(&long).is_none());
        let mut with_ts_out = bytes.clone();
        with_ts_out.extend_from_slice(&[0; 8]);
        with_ts_out[0] += 2;
        assert_eq!(not_a_record(&with_ts_out), None, "a record with ts_out");
        let mut v1_def = vec![0u8; std::mem::size_of::<dbn::v1::InstrumentDefMsg>()];
        (v1_def[0], v1_def[1]) = ((v1_def.len() / 4) as u8, rtype::INSTRUMENT_DEF);
        assert_eq!(not_a_record(&v1_def), None, "a version 1 definition");
    }
}
