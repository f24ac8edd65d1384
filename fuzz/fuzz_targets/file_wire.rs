//! Fuzzes file sharing's decoders in `securecomm-node::files`: fetch-protocol requests and
//! answers and attachment lists (whatever decodes must re-encode to the same bytes), and the
//! image paths: a received thumbnail is decoded under its bounds, and a sender's thumbnail is
//! made from arbitrary bytes (a hostile or bomb image must fail cleanly, within the limits);
//! likewise a custom emoji image is made from arbitrary bytes and a received one decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_node::files::{emoji, thumb};
use securecomm_node::files::wire::{
    FileRequest, FileResponse, Thumbnail, get_attachments, put_attachments,
};
use securecomm_noise::codec::{Decode, Encode, Reader, Writer};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = FileRequest::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
    if let Ok(r) = FileResponse::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
    let mut r = Reader::new(data);
    if let Ok(files) = get_attachments(&mut r) {
        let used = data.len() - r.remaining();
        let mut w = Writer::new();
        put_attachments(&mut w, &files);
        assert_eq!(w.into_bytes(), &data[..used]);
    }
    let t = Thumbnail {
        width: 1,
        height: 1,
        jpeg: data.to_vec(),
    };
    if let Some((w, h, px)) = thumb::decode(&t) {
        assert_eq!(px.len(), w as usize * h as usize * 4);
    }
    if let Some(t) = thumb::make(std::io::Cursor::new(data)) {
        assert!(t.jpeg.len() <= securecomm_node::files::wire::MAX_THUMBNAIL);
    }
    if let Ok(png) = emoji::normalize(data) {
        let (w, h, px) = emoji::decode(&png).expect("a made emoji image decodes");
        assert!(w <= emoji::EMOJI_SIDE && h <= emoji::EMOJI_SIDE);
        assert_eq!(px.len(), w as usize * h as usize * 4);
    }
    if let Ok((w, h, _)) = emoji::decode(data) {
        assert!(w <= emoji::EMOJI_SIDE && h <= emoji::EMOJI_SIDE);
    }
});
