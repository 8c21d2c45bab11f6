//! Helpers shared by the unit tests of the protocol sections.

use super::Frame;

pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub fn one_frame(bytes: &[u8], max: usize) -> Frame {
    let frame = Frame::parse(bytes, max).unwrap().unwrap();
    assert_eq!(
        frame.raw().len(),
        bytes.len(),
        "one frame, nothing after it"
    );
    frame
}
