//! Completing a "checksum blank" frame (`NETTXF_csum_blank` from a front
//! end, `NETRXF_csum_blank` from a back end).
//!
//! Linux's netfront offloads IPv4 TCP and UDP checksums unconditionally: a
//! locally generated segment arrives with its protocol checksum left for
//! "the hardware". A back end that hands frames to something without
//! offload (a plain TAP, a userspace stack) must fill it in, and so must a
//! front end given such a frame. The field is not trusted: like Linux's
//! `skb_checksum_setup`, the pseudo-header is recomputed from the IP header
//! and the whole transport checksum is computed afresh. Frames whose headers
//! cannot be parsed are refused (Linux drops them).

/// Why a checksum-blank frame could not be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CsumError {
    /// Not IPv4 (after at most one 802.1Q tag), or not TCP/UDP.
    #[error("checksum offload on a frame that is not IPv4 TCP or UDP")]
    Unsupported,
    /// A header runs past the frame or is inconsistent.
    #[error("checksum offload on a frame with malformed headers")]
    Malformed,
}

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Adds `data` as big-endian 16-bit words (an odd last byte padded with 0).
fn sum_words(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        // Fold early so a 64 KiB frame cannot overflow the accumulator.
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc as u16
}

/// Computes and stores the TCP or UDP checksum of an IPv4 Ethernet frame.
pub fn complete(frame: &mut [u8]) -> Result<(), CsumError> {
    let mut l3 = ETH_HLEN;
    let mut ethertype = be16(frame, 12).ok_or(CsumError::Malformed)?;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, 16).ok_or(CsumError::Malformed)?;
        l3 += 4;
    }
    if ethertype != ETHERTYPE_IPV4 {
        return Err(CsumError::Unsupported);
    }
    let ip = frame.get(l3..).ok_or(CsumError::Malformed)?;
    let first = *ip.first().ok_or(CsumError::Malformed)?;
    let ihl = usize::from(first & 0x0F) * 4;
    if first >> 4 != 4 || ihl < 20 || ip.len() < ihl {
        return Err(CsumError::Malformed);
    }
    let total = usize::from(be16(ip, 2).ok_or(CsumError::Malformed)?);
    if total < ihl || total > ip.len() {
        return Err(CsumError::Malformed);
    }
    // A fragment other than the first carries no transport header.
    let frag = be16(ip, 6).ok_or(CsumError::Malformed)?;
    if frag & 0x1FFF != 0 {
        return Err(CsumError::Unsupported);
    }
    let proto = ip[9];
    let field = match proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => return Err(CsumError::Unsupported),
    };
    let l4_len = total - ihl;
    let min = if proto == PROTO_TCP { 20 } else { 8 };
    if l4_len < min {
        return Err(CsumError::Malformed);
    }
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&ip[12..20]);
    pseudo[9] = proto;
    pseudo[10..].copy_from_slice(&(l4_len as u16).to_be_bytes());
    let l4_at = l3 + ihl;
    let l4 = &mut frame[l4_at..l4_at + l4_len];
    l4[field] = 0;
    l4[field + 1] = 0;
    let sum = sum_words(sum_words(0, &pseudo), l4);
    let mut csum = !fold(sum);
    if proto == PROTO_UDP && csum == 0 {
        // UDP: 0 means "no checksum"; a computed 0 is sent as all ones.
        csum = 0xFFFF;
    }
    l4[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// An Ethernet + IPv4 + `proto` frame with `payload`, checksum 0.
    fn frame(proto: u8, payload: &[u8], vlan: bool) -> Vec<u8> {
        let l4_hdr = if proto == PROTO_TCP { 20 } else { 8 };
        let mut f = Vec::new();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
        if vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        }
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + l4_hdr + payload.len()) as u16;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        f.extend_from_slice(&ip);
        let mut l4 = alloc::vec![0u8; l4_hdr];
        l4[0..2].copy_from_slice(&1234u16.to_be_bytes());
        l4[2..4].copy_from_slice(&80u16.to_be_bytes());
        if proto == PROTO_UDP {
            l4[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        } else {
            l4[12] = 5 << 4;
        }
        f.extend_from_slice(&l4);
        f.extend_from_slice(payload);
        f
    }

    /// The checksum the textbook way (RFC 1071, byte pairs, one fold at
    /// the end) over pseudo-header and segment: valid iff it sums to 0xFFFF.
    fn verifies(f: &[u8], l3: usize) -> bool {
        let ip = &f[l3..];
        let ihl = usize::from(ip[0] & 0xF) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let seg = &ip[ihl..total];
        let mut words: Vec<u32> = Vec::new();
        for c in ip[12..20].chunks(2) {
            words.push(u32::from(c[0]) << 8 | u32::from(c[1]));
        }
        words.push(u32::from(ip[9]));
        words.push(seg.len() as u32);
        for c in seg.chunks(2) {
            words.push(u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)));
        }
        let mut s: u64 = words.iter().map(|&w| u64::from(w)).sum();
        while s >> 16 != 0 {
            s = (s & 0xFFFF) + (s >> 16);
        }
        s == 0xFFFF
    }

    #[test]
    fn fills_in_tcp_and_udp_checksums_whatever_the_field_held() {
        for proto in [PROTO_TCP, PROTO_UDP] {
            for vlan in [false, true] {
                for len in [0usize, 1, 17, 1400] {
                    let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                    let mut f = frame(proto, &payload, vlan);
                    let l3 = if vlan { 18 } else { 14 };
                    let field = l3 + 20 + if proto == PROTO_TCP { 16 } else { 6 };
                    // Whatever the sender left there (pseudo-header sum or junk).
                    f[field] = 0xAB;
                    f[field + 1] = 0xCD;
                    assert!(!verifies(&f, l3));
                    complete(&mut f).unwrap();
                    assert!(verifies(&f, l3), "proto {proto} vlan {vlan} len {len}");
                }
            }
        }
    }

    #[test]
    fn trailing_ethernet_padding_is_not_summed() {
        let mut f = frame(PROTO_UDP, b"hi", false);
        f.extend_from_slice(&[0xEE; 12]); // padded to the Ethernet minimum
        complete(&mut f).unwrap();
        assert!(verifies(&f, 14));
    }

    #[test]
    fn refuses_what_it_cannot_parse() {
        let good = frame(PROTO_TCP, b"x", false);
        assert_eq!(complete(&mut [0u8; 10]), Err(CsumError::Malformed));
        let mut ipv6 = good.clone();
        ipv6[12..14].copy_from_slice(&0x86DDu16.to_be_bytes());
        assert_eq!(complete(&mut ipv6), Err(CsumError::Unsupported));
        let mut icmp = good.clone();
        icmp[14 + 9] = 1;
        assert_eq!(complete(&mut icmp), Err(CsumError::Unsupported));
        let mut long = good.clone();
        long[16..18].copy_from_slice(&9000u16.to_be_bytes());
        assert_eq!(complete(&mut long), Err(CsumError::Malformed));
        let mut short_ihl = good.clone();
        short_ihl[14] = 0x44;
        assert_eq!(complete(&mut short_ihl), Err(CsumError::Malformed));
        let mut truncated = good;
        truncated.truncate(14 + 20 + 10);
        assert_eq!(complete(&mut truncated), Err(CsumError::Malformed));
    }
}
