//! A tiny authoritative DNS server on loopback for tests: answers A and
//! AAAA questions for configured names through a CNAME, as CDNs do, so the
//! address records' owner is not the name that was asked for.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// A running fake DNS server; stops when dropped.
pub struct FakeDns {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name.trim_end_matches('.').split('.') {
        out.push(u8::try_from(label.len()).expect("label length"));
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// The question of a query: name (lower case), type, and where it ends.
fn parse_question(query: &[u8]) -> Option<(String, u16, usize)> {
    let mut off = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(off)?);
        off += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(off..off + len)?).to_ascii_lowercase());
        off += len;
    }
    let qtype = u16::from_be_bytes([*query.get(off)?, *query.get(off + 1)?]);
    Some((labels.join("."), qtype, off + 4))
}

fn answer(query: &[u8], records: &[(String, IpAddr)]) -> Option<Vec<u8>> {
    let (name, qtype, question_end) = parse_question(query)?;
    let ips: Vec<IpAddr> = records
        .iter()
        .filter(|(n, ip)| {
            *n == name && ((qtype == 1 && ip.is_ipv4()) || (qtype == 28 && ip.is_ipv6()))
        })
        .map(|(_, ip)| *ip)
        .collect();
    let known = records.iter().any(|(n, _)| *n == name);
    let edge = format!("edge-{}.cdn.test", name.replace('.', "-"));
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[..2]);
    out.extend_from_slice(&(if known { 0x8180u16 } else { 0x8183 }).to_be_bytes()); // NXDOMAIN if unknown
    out.extend_from_slice(&1u16.to_be_bytes());
    let ancount = if known { 1 + ips.len() } else { 0 };
    out.extend_from_slice(&u16::try_from(ancount).expect("answers").to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..question_end]);
    if known {
        // name CNAME edge (owner compressed to the question at offset 12)
        let mut target = Vec::new();
        encode_name(&edge, &mut target);
        let cname_rdata_at = out.len() + 12;
        out.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60]);
        out.extend_from_slice(&u16::try_from(target.len()).expect("rdlen").to_be_bytes());
        out.extend_from_slice(&target);
        for ip in ips {
            // edge A/AAAA ip (owner compressed to the CNAME's target)
            let ptr = 0xc000u16 | u16::try_from(cname_rdata_at).expect("offset");
            out.extend_from_slice(&ptr.to_be_bytes());
            out.extend_from_slice(&qtype.to_be_bytes());
            out.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
            match ip {
                IpAddr::V4(v4) => {
                    out.extend_from_slice(&4u16.to_be_bytes());
                    out.extend_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    out.extend_from_slice(&16u16.to_be_bytes());
                    out.extend_from_slice(&v6.octets());
                }
            }
        }
    }
    Some(out)
}

impl FakeDns {
    /// Serves `records` (name → address) on UDP `addr`.
    pub fn start(addr: SocketAddr, records: &[(&str, IpAddr)]) -> Self {
        let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("fake DNS bind {addr}: {e}"));
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let records: Vec<(String, IpAddr)> = records
            .iter()
            .map(|(n, ip)| (n.to_ascii_lowercase(), *ip))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop_flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..n], &records) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
