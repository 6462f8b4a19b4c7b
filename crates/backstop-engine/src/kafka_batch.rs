//! The relay's Kafka record batches (message format v2, uncompressed), encoded here instead of record by record in
//! Python: the bytes aiokafka's `DefaultRecordBatchBuilder` writes for the same records, timestamp and producer
//! state (tests/differential/test_kafka_batches.py compares them), and the partition Kafka's default partitioner gives a key.
//! A batch is encoded without its producer state, which the producer assigns only when it sends it (`seal`).

use rustc_hash::FxHashMap as HashMap;

/// Kafka's default partitioner for a keyed record: murmur2 of the key, its sign bit cleared, modulo the count.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) as u32 % partitions
}

/// Kafka's murmur2 (seed 0x9747b28c), as the Java client and aiokafka compute it.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

// The batch header (61 bytes): base offset i64, length i32, partition leader epoch i32, magic i8, CRC u32,
// attributes i16, last offset delta i32, first and max timestamp i64, producer id i64, producer epoch i16, base
// sequence i32, record count i32. The CRC-32C covers everything from the attributes on.
const HEADER: usize = 61;
const LENGTH_AT: usize = 8;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const PRODUCER_AT: usize = 43;
const MAGIC: u8 = 2;
const NO_PARTITION_LEADER_EPOCH: i32 = -1;

/// Kafka's varint: zigzag, then 7 bits a byte, least significant first.
fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(value: i64) -> usize {
    let v = ((value << 1) ^ (value >> 63)) as u64;
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// One partition's open record batch: records appended while the batch stays below `max_bytes` (the first always,
/// as aiokafka's compiled builder takes them), each with the batch's one timestamp.
pub struct BatchEncoder {
    buffer: Vec<u8>,
    record: Vec<u8>,
    records: i32,
    timestamp_ms: i64,
    max_bytes: usize,
}

impl BatchEncoder {
    pub fn new(timestamp_ms: i64, max_bytes: usize) -> Self {
        let mut buffer = Vec::with_capacity(max_bytes.min(1 << 16));
        buffer.resize(HEADER, 0);
        BatchEncoder { buffer, record: Vec::with_capacity(1024), records: 0, timestamp_ms, max_bytes }
    }

    pub fn records(&self) -> i32 {
        self.records
    }

    /// Appends a record (key, value and headers, each header's value present); false, appending nothing, when the
    /// batch would reach its size with it and holds a record already.
    pub fn append(&mut self, key: &[u8], value: &[u8], headers: &[(&[u8], &[u8])]) -> bool {
        let record = &mut self.record;
        record.clear();
        record.push(0); // attributes
        put_varint(record, 0); // timestamp delta: one timestamp per batch
        put_varint(record, i64::from(self.records)); // offset delta
        for field in [key, value] {
            put_varint(record, field.len() as i64);
            record.extend_from_slice(field);
        }
        put_varint(record, headers.len() as i64);
        for (name, content) in headers {
            put_varint(record, name.len() as i64);
            record.extend_from_slice(name);
            put_varint(record, content.len() as i64);
            record.extend_from_slice(content);
        }
        let length = record.len() as i64;
        if self.records > 0 && self.buffer.len() + varint_len(length) + record.len() >= self.max_bytes {
            return false;
        }
        put_varint(&mut self.buffer, length);
        self.buffer.extend_from_slice(record);
        self.records += 1;
        true
    }

    /// The batch with its header, as the producer's state before it is known (id -1, epoch -1, sequence 0): `seal`
    /// writes the state it is sent with.
    pub fn finish(mut self) -> Vec<u8> {
        let buffer = &mut self.buffer;
        let length = (buffer.len() - 12) as i32;
        let last_offset_delta = self.records - 1;
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            buffer[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&0i64.to_be_bytes()); // base offset: the broker's to set
        put(&length.to_be_bytes());
        put(&NO_PARTITION_LEADER_EPOCH.to_be_bytes());
        put(&[MAGIC]);
        put(&0u32.to_be_bytes()); // the CRC, written by seal
        put(&0i16.to_be_bytes()); // attributes: no compression, create time, not transactional
        put(&last_offset_delta.to_be_bytes());
        put(&self.timestamp_ms.to_be_bytes());
        put(&self.timestamp_ms.to_be_bytes());
        debug_assert_eq!(at, PRODUCER_AT);
        let mut batch = std::mem::take(&mut self.buffer);
        batch[PRODUCER_AT + 14..HEADER].copy_from_slice(&self.records.to_be_bytes());
        seal(&mut batch, -1, -1, 0);
        batch
    }
}

/// One record to publish: its topic and partition, key and value, its place in its source under the source's
/// header, and its record id under its header (the relay's two headers, in that order).
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub place_header: &'a str,
    pub place: i64,
    pub record_id_header: &'a str,
    pub record_id: &'a str,
}

/// Records as record batches: (topic, partition, records, batch) in sending order, a partition's batches in its
/// records' order, each below `max_bytes` unless one record alone is not (a full batch goes first and the next
/// one of its partition starts).
pub fn encode<'a>(records: impl IntoIterator<Item = Record<'a>>, timestamp_ms: i64, max_bytes: usize)
                  -> Vec<(&'a str, u32, i32, Vec<u8>)> {
    let mut open: HashMap<(&str, u32), BatchEncoder> = HashMap::default();
    let mut order: Vec<(&str, u32)> = Vec::new();
    let mut done: Vec<((&str, u32), BatchEncoder)> = Vec::new();
    let mut place = Vec::with_capacity(20);
    for record in records {
        place.clear();
        place.extend_from_slice(record.place.to_string().as_bytes());
        let headers: [(&[u8], &[u8]); 2] = [(record.place_header.as_bytes(), &place),
                                            (record.record_id_header.as_bytes(), record.record_id.as_bytes())];
        let at = (record.topic, record.partition);
        let encoder = open.entry(at).or_insert_with(|| {
            order.push(at);
            BatchEncoder::new(timestamp_ms, max_bytes)
        });
        if !encoder.append(record.key, record.value, &headers) {
            let full = std::mem::replace(encoder, BatchEncoder::new(timestamp_ms, max_bytes));
            done.push((at, full));
            encoder.append(record.key, record.value, &headers);
        }
    }
    done.extend(order.into_iter().map(|at| (at, open.remove(&at).expect("an open batch per partition seen"))));
    done.into_iter().map(|((topic, partition), encoder)| (topic, partition, encoder.records(), encoder.finish()))
        .collect()
}

/// Writes the producer's id, epoch and base sequence into a finished batch and its CRC after them.
pub fn seal(batch: &mut [u8], producer_id: i64, producer_epoch: i16, base_sequence: i32) {
    assert!(batch.len() >= HEADER && batch[LENGTH_AT + 8] == MAGIC, "not a finished record batch");
    batch[PRODUCER_AT..PRODUCER_AT + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[PRODUCER_AT + 8..PRODUCER_AT + 10].copy_from_slice(&producer_epoch.to_be_bytes());
    batch[PRODUCER_AT + 10..PRODUCER_AT + 14].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Kafka's own test vectors (org.apache.kafka.common.utils.UtilsTest#testMurmur2)
        let cases: [(&[u8], i32); 4] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
        ];
        for (key, hash) in cases {
            assert_eq!(murmur2(key), hash, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn varints_are_zigzag() {
        for (value, bytes) in [(0i64, vec![0u8]), (-1, vec![1]), (1, vec![2]), (63, vec![126]), (64, vec![128, 1]),
                               (-65, vec![129, 1]), (300, vec![216, 4])] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out, bytes, "{value}");
            assert_eq!(varint_len(value), bytes.len(), "{value}");
        }
    }

    #[test]
    fn a_batch_takes_records_while_they_fit_and_always_its_first() {
        let mut small = BatchEncoder::new(7, 10);
        assert!(small.append(b"k", &[b'v'; 100], &[]));
        assert!(!small.append(b"k", b"v", &[]));
        assert_eq!(small.records(), 1);
        let batch = small.finish();
        assert_eq!(i32::from_be_bytes(batch[LENGTH_AT..LENGTH_AT + 4].try_into().unwrap()) as usize, batch.len() - 12);
        assert_eq!(i32::from_be_bytes(batch[HEADER - 4..HEADER].try_into().unwrap()), 1);
    }

    #[test]
    fn sealing_writes_the_state_and_a_crc_over_it() {
        let mut encoder = BatchEncoder::new(1_700_000_000_000, 1 << 20);
        assert!(encoder.append(b"acct", b"{}", &[(b"h", b"1")]));
        let mut batch = encoder.finish();
        let unsealed_crc = batch[CRC_AT..CRC_AT + 4].to_vec();
        seal(&mut batch, 42, 3, 17);
        assert_eq!(i64::from_be_bytes(batch[PRODUCER_AT..PRODUCER_AT + 8].try_into().unwrap()), 42);
        assert_eq!(i32::from_be_bytes(batch[PRODUCER_AT + 10..PRODUCER_AT + 14].try_into().unwrap()), 17);
        assert_ne!(batch[CRC_AT..CRC_AT + 4].to_vec(), unsealed_crc);
        assert_eq!(u32::from_be_bytes(batch[CRC_AT..CRC_AT + 4].try_into().unwrap()),
                   crc32c::crc32c(&batch[ATTRIBUTES_AT..]));
    }
}
