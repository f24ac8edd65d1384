//! Fuzzes file sharing's decoders in `securecomm-node::files`: fetch-protocol requests and
//! answers and attachment lists (whatever decodes must re-encode to the same bytes; the
//! borrowing answer decoder a fetch uses must agree with the owning one, and the in-place
//! chunks encoder a server uses must produce the same bytes), and the
//! image paths: a received thumbnail is decoded under its bounds, and a sender's thumbnail is
//! made from arbitrary bytes (a hostile or bomb image must fail cleanly, within the limits);
//! likewise a custom emoji image is made from arbitrary bytes and a received one decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_node::files::{emoji, thumb};
use securecomm_node::files::wire::{
    FileAnswer, FileRequest, FileResponse, Thumbnail, encode_chunks, get_attachments,
    put_attachments,
};
use securecomm_noise::codec::{Decode, Encode, Reader, Writer};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = FileRequest::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
    let owned = FileResponse::from_bytes(data);
    if let Ok(r) = &owned {
        assert_eq!(r.to_bytes(), data);
    }
    match (FileAnswer::parse(data), &owned) {
        (Ok(FileAnswer::Chunks(c)), Ok(FileResponse::Chunks(o))) => {
            assert!(c.iter().zip(o).all(|((i, b), (j, v))| i == j && *b == &v[..]));
            assert_eq!(c.len(), o.len());
            let mut out = Vec::new();
            let n = encode_chunks::<()>(
                &mut out,
                c.iter().map(|(i, _)| *i),
                |i| c.iter().find(|(j, _)| *j == i).map(|(_, b)| b.len()),
                |i, buf| {
                    let b = c.iter().find(|(j, _)| *j == i).map(|(_, b)| *b).ok_or(())?;
                    buf.copy_from_slice(b);
                    Ok(())
                },
            );
            // Indexes repeat in arbitrary input; the encoder is only used with distinct ones.
            let distinct = c.iter().enumerate().all(|(k, (i, _))| c[..k].iter().all(|(j, _)| j != i));
            if distinct {
                assert_eq!(n, Ok(c.len()));
                assert_eq!(out, data);
            }
        }
        (Ok(FileAnswer::Other(a)), Ok(o)) => assert_eq!(&a, o),
        (Err(_), Err(_)) => {}
        (a, o) => panic!("the two answer decoders disagree: {a:?} / {o:?}"),
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
