//! Hand-built weight files for the crafted-file and fuzz tests: a stored/deflated zip writer, a pickle of one
//! tensor as `torch.save` writes it, a deflate stream of zeros. Written from the format specifications
//! (APPNOTE for zip, RFC 1951 for deflate, the pickle protocol-2 opcodes).

/// CRC-32 (IEEE), bit by bit.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// One zip entry: name, compression method, the bytes as stored, the uncompressed size and CRC declared.
pub struct ZipEntry<'a> {
    pub name: &'a str,
    pub method: u16,
    pub data: Vec<u8>,
    pub size: u32,
    pub crc: u32,
}

impl<'a> ZipEntry<'a> {
    pub fn stored(name: &'a str, data: &[u8]) -> Self {
        ZipEntry { name, method: 0, data: data.to_vec(), size: data.len() as u32, crc: crc32(data) }
    }
}

/// A zip archive as `torch.save` writes one (local headers, central directory, end record).
pub fn zip(entries: &[ZipEntry<'_>]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for e in entries {
        let offset = out.len() as u32;
        let common = |buf: &mut Vec<u8>| {
            for v in [e.method.to_le_bytes(), [0, 0], [0, 0x21]] {
                buf.extend_from_slice(&v);
            }
            buf.extend_from_slice(&e.crc.to_le_bytes());
            buf.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
            buf.extend_from_slice(&e.size.to_le_bytes());
            buf.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            buf.extend_from_slice(&0u16.to_le_bytes());
        };
        out.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00");
        common(&mut out);
        out.extend_from_slice(e.name.as_bytes());
        out.extend_from_slice(&e.data);
        central.extend_from_slice(b"PK\x01\x02\x14\x00\x14\x00\x00\x00");
        common(&mut central);
        central.extend_from_slice(&[0; 10]); // comment length, disk, internal and external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(e.name.as_bytes());
    }
    let (cd_offset, cd_size) = (out.len() as u32, central.len() as u32);
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06\x00\x00\x00\x00");
    let n = (entries.len() as u16).to_le_bytes();
    out.extend_from_slice(&[n[0], n[1], n[0], n[1]]);
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

pub fn pickle_str(p: &mut Vec<u8>, s: &str) {
    p.push(b'X');
    p.extend_from_slice(&(s.len() as u32).to_le_bytes());
    p.extend_from_slice(s.as_bytes());
}

pub fn pickle_int(p: &mut Vec<u8>, v: u64) {
    match i32::try_from(v) {
        Ok(v) => {
            p.push(b'J');
            p.extend_from_slice(&v.to_le_bytes());
        }
        Err(_) => {
            p.extend_from_slice(&[0x8a, 8]);
            p.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// `{key: torch._utils._rebuild_tensor_v2(<FloatStorage '0' of `numel`>, 0, shape, stride, False,
/// OrderedDict())}` as a protocol-2 pickle, the way `torch.save` writes a state dict.
pub fn state_dict_pickle(key: &str, numel: u64, shape: &[u64], stride: &[u64]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}'];
    pickle_str(&mut p, key);
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.push(b'(');
    pickle_str(&mut p, "storage");
    p.extend_from_slice(b"ctorch\nFloatStorage\n");
    pickle_str(&mut p, "0");
    pickle_str(&mut p, "cpu");
    pickle_int(&mut p, numel);
    p.extend_from_slice(b"tQ");
    pickle_int(&mut p, 0);
    for dims in [shape, stride] {
        p.push(b'(');
        dims.iter().for_each(|&d| pickle_int(&mut p, d));
        p.push(b't');
    }
    p.push(0x89);
    p.extend_from_slice(b"ccollections\nOrderedDict\n)RtRs.");
    p
}

/// A PyTorch zip checkpoint: the pickle entry, `byteorder`, and storage `0`.
pub fn checkpoint(pickle: ZipEntry<'_>, storage: &[u8]) -> Vec<u8> {
    zip(&[pickle, ZipEntry::stored("archive/byteorder", b"little"), ZipEntry::stored("archive/data/0", storage)])
}

/// A deflate stream (one fixed-Huffman block) that inflates to `len` zero bytes from about `len / 160`.
pub fn deflate_zeros(len: usize) -> Vec<u8> {
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u64, 0u32);
    let mut put = |value: u64, n: u32, msb_first: bool| {
        let value = if msb_first { (0..n).fold(0, |v, i| (v << 1) | ((value >> i) & 1)) } else { value };
        acc |= value << bits;
        bits += n;
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    };
    put(0b011, 3, false); // final block, fixed Huffman
    put(0b0011_0000, 8, true); // literal 0
    let mut left = len - 1;
    while left >= 258 {
        put(0b1100_0101, 8, true); // length 258
        put(0, 5, true); // distance 1
        left -= 258;
    }
    for _ in 0..left {
        put(0b0011_0000, 8, true);
    }
    put(0, 7, true); // end of block
    put(0, 7, false);
    out
}
