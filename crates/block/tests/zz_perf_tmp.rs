mod common;
use common::*;
#[test]
fn perf() {
    let scratch = Scratch::new("perf");
    let path = scratch.path("p.qcow2");
    create_qcow2(&path, "1G", "");
    let mut img = open(&path, None, false);
    let buf = vec![0x11u8; 128 << 10];
    let t = std::time::Instant::now();
    for i in 0..512u64 {
        img.write_at(&buf, i * (128 << 10)).unwrap();
    }
    img.flush().unwrap();
    eprintln!("64 MiB seq alloc writes: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    for i in 0..512u64 {
        img.write_at(&buf, i * (128 << 10)).unwrap();
    }
    eprintln!("64 MiB overwrite: {:?}", t.elapsed());
    let mut r = vec![0u8; 128 << 10];
    let t = std::time::Instant::now();
    for i in 0..512u64 {
        img.read_at(&mut r, i * (128 << 10)).unwrap();
    }
    eprintln!("64 MiB read: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    for i in 0..2000u64 {
        img.write_at(&buf[..4096], (100 << 20) + i * 65536 + 512)
            .unwrap();
    }
    eprintln!("2000 4k COW writes: {:?}", t.elapsed());
}
