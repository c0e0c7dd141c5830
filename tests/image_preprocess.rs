//! Images in: grid selection against `aspect_ratio_cases.json` (both rules, exact), full
//! preprocessing of chelsea.png and rocket.jpg against `preprocess/*.safetensors` (bit for
//! bit; the measured difference is printed), the JPEG decoder against Pillow's decodes, the
//! PIL-bicubic resampler on its own, and bad image files (each a typed error, fast, without
//! a giant allocation).
//! Golden data: ../shared/golden, README sections 3 and 5.

use npurt_runtime::image::{
    self, candidates, decode_bytes, decode_file, llava_next_grid, plan, preprocess, read_header,
    relaxed_grid, resize_bicubic, DecodeLimits, ImageError, ImagePlan, RgbImage, SourceFormat,
    TilingOptions, TilingRule,
};
use npurt_tests::{golden, read_json, GoldenTensors};
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// The largest single allocation made by the current thread, so a test can show that a
// hostile header was refused without allocating what it claimed.

struct LargestAlloc;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for LargestAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: LargestAlloc = LargestAlloc;

/// Runs `f`, returning its result, the time it took and its largest single allocation.
fn measured<T>(f: impl FnOnce() -> T) -> (T, Duration, usize) {
    LARGEST.with(|l| l.set(0));
    let t = Instant::now();
    let out = f();
    (out, t.elapsed(), LARGEST.with(|l| l.get()))
}

// ---------------------------------------------------------------------------------------
// Grid selection

fn grid(v: &Value) -> [u32; 2] {
    let a = v
        .as_array()
        .unwrap_or_else(|| panic!("expected [m, n], got {v}"));
    [a[0].as_u64().unwrap() as u32, a[1].as_u64().unwrap() as u32]
}

#[test]
fn aspect_ratio_cases_match_both_rules_exactly() {
    let doc = read_json("aspect_ratio_cases.json");
    let tile = doc["patch"].as_u64().unwrap() as u32;
    assert_eq!(tile, 384);
    let cases = doc["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 64, "the README promises 64 cases");
    let mut failures = Vec::new();
    for c in cases {
        let (w, h) = (
            c["w"].as_u64().unwrap() as u32,
            c["h"].as_u64().unwrap() as u32,
        );
        let max = c["max_patches"].as_u64().unwrap() as u32;
        let alpha = c["alpha"].as_f64().unwrap();
        let want_cands: Vec<[u32; 2]> = c["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(grid)
            .collect();
        let cands = candidates(max);
        if cands != want_cands {
            failures.push(format!(
                "{w}x{h} max {max}: candidate order {cands:?} != {want_cands:?}"
            ));
            continue;
        }
        for (rule, key, canvas_key) in [
            (TilingRule::Relaxed, "relaxed", "relaxed_canvas_wh"),
            (TilingRule::LlavaNext, "llava_next", "llava_next_canvas_wh"),
        ] {
            let got = match rule {
                TilingRule::Relaxed => relaxed_grid(w, h, tile, &cands, alpha),
                TilingRule::LlavaNext => llava_next_grid(w, h, tile, &cands),
            };
            let opts = TilingOptions {
                rule,
                alpha,
                max_tiles: max,
                ..TilingOptions::default()
            };
            let p = plan(w, h, &opts).unwrap();
            let (want, want_canvas) = (grid(&c[key]), grid(&c[canvas_key]));
            if got != want || p.grid != want || p.canvas != want_canvas {
                failures.push(format!(
                    "{} {w}x{h} max {max} alpha {alpha}: {key} got {got:?} (plan {:?}, canvas {:?}), want {want:?} (canvas {want_canvas:?})",
                    c["group"], p.grid, p.canvas
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn paper_examples_and_re_max_drift_are_literal() {
    let doc = read_json("aspect_ratio_cases.json");
    let cands = candidates(9);
    for e in doc["paper_examples"].as_array().unwrap() {
        let (w, h) = (
            e["w"].as_u64().unwrap() as u32,
            e["h"].as_u64().unwrap() as u32,
        );
        assert_eq!(
            relaxed_grid(w, h, 384, &cands, 0.1),
            grid(&e["relaxed"]),
            "{w}x{h}"
        );
        assert_eq!(
            llava_next_grid(w, h, 384, &cands),
            grid(&e["llava_next"]),
            "{w}x{h}"
        );
    }
    // Re_max is the current best's Re, not the largest seen: these keep < 90% of the best.
    for e in doc["re_max_drift_scan"]["examples"].as_array().unwrap() {
        let (w, h) = (
            e["w"].as_u64().unwrap() as u32,
            e["h"].as_u64().unwrap() as u32,
        );
        assert_eq!(
            relaxed_grid(w, h, 384, &cands, 0.1),
            grid(&e["relaxed"]),
            "{w}x{h}"
        );
    }
    // The float hazard the README names: 3000 * 0.288 truncates to 863 in f64. With
    // alpha 0 only strictly larger Re wins, so the first grid reaching the maximum does.
    assert_eq!(relaxed_grid(50, 30, 384, &cands, 0.0), [9, 1]);
    assert_eq!(relaxed_grid(394, 390, 384, &cands, 0.0), [3, 3]);
}

#[test]
fn default_options_are_bluelm_v_3b() {
    let opts = TilingOptions::default();
    assert_eq!(
        (opts.rule, opts.alpha, opts.max_tiles, opts.tile),
        (TilingRule::Relaxed, 0.1, 9, 384)
    );
    assert_eq!(
        opts.tokens_per_tile(),
        196,
        "27x27 patches -> 14x14 after the 2x2 merge"
    );
    // The paper's example: a 768x1536 image is a 2:4 grid + thumbnail = 9 tiles, 1764 tokens.
    let p = plan(768, 1536, &opts).unwrap();
    assert_eq!((p.grid, p.tiles, p.image_tokens), ([2, 4], 9, 1764));
    assert_eq!((p.resized, p.padding), ([768, 1536], [0, 0, 0, 0]));
    // A model can change the patch and merge factor: 448 / 14 = 32 -> 16x16 = 256.
    let internvl = TilingOptions { tile: 448, ..opts };
    assert_eq!(internvl.tokens_per_tile(), 256);
    let no_merge = TilingOptions { merge: 1, ..opts };
    assert_eq!(no_merge.tokens_per_tile(), 729);
}

#[test]
fn bad_tiling_options_are_typed_errors() {
    let d = TilingOptions::default();
    for (opts, option) in [
        (TilingOptions { alpha: -0.1, ..d }, "alpha"),
        (
            TilingOptions {
                alpha: f64::NAN,
                ..d
            },
            "alpha",
        ),
        (
            TilingOptions {
                alpha: f64::INFINITY,
                ..d
            },
            "alpha",
        ),
        (TilingOptions { max_tiles: 0, ..d }, "max_tiles"),
        (
            TilingOptions {
                max_tiles: 1_000_000,
                ..d
            },
            "max_tiles",
        ),
        (TilingOptions { tile: 0, ..d }, "tile"),
        (TilingOptions { tile: 1 << 20, ..d }, "tile"),
        (TilingOptions { patch: 0, ..d }, "patch"),
        (TilingOptions { merge: 0, ..d }, "merge"),
    ] {
        match plan(640, 480, &opts) {
            Err(ImageError::InvalidOption { option: o, .. }) => assert_eq!(o, option),
            other => panic!("{option}: expected InvalidOption, got {other:?}"),
        }
    }
    assert!(matches!(
        plan(0, 480, &d),
        Err(ImageError::ZeroSized { .. })
    ));
    assert_eq!(TilingRule::parse("llava-next"), Some(TilingRule::LlavaNext));
    assert_eq!(TilingRule::parse("internvl"), None);
}

// ---------------------------------------------------------------------------------------
// Full preprocessing against the goldens

fn to_level(v: f32) -> i32 {
    ((v * 0.5 + 0.5) * 255.0).round() as i32
}

struct Diff {
    max: f32,
    mean: f64,
    differing: usize,
    n: usize,
}

fn diff(ours: &[f32], reference: &[f32]) -> Diff {
    assert_eq!(ours.len(), reference.len(), "length mismatch");
    let mut d = Diff {
        max: 0.0,
        mean: 0.0,
        differing: 0,
        n: ours.len(),
    };
    for (a, b) in ours.iter().zip(reference) {
        let e = (a - b).abs();
        d.max = d.max.max(e);
        d.mean += f64::from(e);
        d.differing += usize::from(to_level(*a) != to_level(*b));
    }
    d.mean /= ours.len() as f64;
    d
}

/// `rocket.jpg` as Pillow 13.0.0 (libjpeg-turbo) decodes it, stored losslessly: the
/// input the golden pipeline saw, so the preprocessing can be checked apart from the JPEG
/// decoder, and the decoder apart from the preprocessing
/// (`jpeg_decoder_is_bit_identical_to_libjpeg`).
fn rocket_as_pillow_decodes_it() -> RgbImage {
    let p = npurt_tests::project_root().join("tests/data/rocket_decoded_by_pillow.png");
    decode_file(&p, &DecodeLimits::default()).unwrap()
}

fn golden_image(name: &str) -> RgbImage {
    let meta = read_json(&format!("preprocess/{name}.json"));
    let path = golden(&format!("images/{}", meta["image"].as_str().unwrap()));
    decode_file(&path, &DecodeLimits::default()).unwrap()
}

/// Plans and preprocesses `img` as `preprocess/{name}.json` says, checks the plan
/// exactly, and returns the difference of `pixel_values` to the golden (printed).
fn preprocess_vs_golden(name: &str, img: &RgbImage, what: &str) -> Diff {
    let meta = read_json(&format!("preprocess/{name}.json"));
    assert_eq!(
        [img.width() as u64, img.height() as u64],
        [meta["w"].as_u64().unwrap(), meta["h"].as_u64().unwrap()]
    );
    assert_eq!(meta["rule"], "relaxed");
    let opts = TilingOptions {
        alpha: meta["alpha"].as_f64().unwrap(),
        max_tiles: meta["max_patches"].as_u64().unwrap() as u32,
        ..TilingOptions::default()
    };
    let p = plan(img.width(), img.height(), &opts).unwrap();
    let pad = &meta["pad"];
    let want_padding = ["left", "top", "right", "bottom"].map(|k| pad[k].as_u64().unwrap() as u32);
    assert_eq!(p.grid, grid(&meta["grid"]), "{name} grid");
    assert_eq!(p.canvas, grid(&meta["canvas_wh"]), "{name} canvas");
    assert_eq!(p.resized, grid(&meta["resized_wh"]), "{name} resized");
    assert_eq!(p.padding, want_padding, "{name} padding");
    assert_eq!(
        p.tiles as u64,
        meta["n_patches"].as_u64().unwrap(),
        "{name} tiles"
    );

    let pixels = preprocess(img, &p).unwrap();
    let (shape, reference) =
        GoldenTensors::open(&format!("preprocess/{name}.safetensors")).f32("pixel_values");
    assert_eq!(pixels.shape().to_vec(), shape, "{name} pixel_values shape");
    // Padding is black (-1.0) exactly; tile 1's first pixel is padding in both images.
    assert_eq!(pixels.tile_data(1)[0], -1.0, "{name}: padding is black");
    let d = diff(&pixels.data, &reference);
    println!(
        "{name} ({what}): pixel_values vs golden: max abs {:.3e} ({} uint8 levels), mean abs {:.3e}, {} of {} values at another level",
        d.max,
        (d.max * 127.5).round(),
        d.mean,
        d.differing,
        d.n
    );
    d
}

#[test]
fn chelsea_preprocess_is_bit_identical_to_golden() {
    let img = golden_image("chelsea");
    let p = plan(img.width(), img.height(), &TilingOptions::default()).unwrap();
    assert_eq!(
        (p.grid, p.resized, p.padding),
        ([2, 1], [578, 384], [95, 0, 95, 0])
    );
    assert_eq!((p.tiles, p.image_tokens), (3, 588));
    // A PNG decodes losslessly, so this is the resampler, padding, tile order and
    // normalisation alone: PIL's, to the last bit.
    let d = preprocess_vs_golden("chelsea", &img, "our PNG decode");
    assert_eq!(d.max, 0.0, "chelsea: not bit-identical to the golden");
}

#[test]
fn rocket_preprocess_from_pillows_decode_is_bit_identical_to_golden() {
    let d = preprocess_vs_golden(
        "rocket",
        &rocket_as_pillow_decodes_it(),
        "Pillow's JPEG decode",
    );
    assert_eq!(d.max, 0.0, "rocket: not bit-identical to the golden");
}

#[test]
fn rocket_preprocess_end_to_end_is_bit_identical_to_golden() {
    let d = preprocess_vs_golden("rocket", &golden_image("rocket"), "our JPEG decode");
    let p = plan(640, 427, &TilingOptions::default()).unwrap();
    assert_eq!(
        (p.grid, p.resized, p.padding),
        ([2, 2], [768, 513], [0, 127, 0, 128])
    );
    assert_eq!(
        d.max, 0.0,
        "rocket: pixel_values differ from the golden by {} ({} of {} values at another level)",
        d.max, d.differing, d.n
    );
}

#[test]
fn jpeg_decoder_is_bit_identical_to_libjpeg() {
    let ours = golden_image("rocket");
    let pillow = rocket_as_pillow_decodes_it();
    assert_eq!(ours.dimensions(), pillow.dimensions());
    let (max, differing) = level_diff(&ours, &pillow);
    println!(
        "rocket.jpg decode vs Pillow (libjpeg-turbo): max {max} levels, {differing} of {} values differ",
        ours.as_raw().len()
    );
    assert_eq!(
        (max, differing),
        (0, 0),
        "decoded rocket.jpg differs from Pillow's"
    );
}

/// Every layout npurt's own JPEG decoder takes (4:4:4, 4:2:2, 4:2:0, 4:4:0, mixed
/// factors, grey, restart intervals, optimised Huffman tables, SOF1 with 16-bit quant
/// tables, one scan per component, widths where libjpeg stops filtering), each against
/// Pillow's decode of it: `tests/data/jpeg`, made by `scripts/make-jpeg-fixtures.py`.
#[test]
fn baseline_jpeg_layouts_decode_exactly_as_pillow() {
    let dir = npurt_tests::project_root().join("tests/data/jpeg");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 15, "fixtures in {}", dir.display());
    let mut failures = Vec::new();
    for jpg in &names {
        let ours = decode_file(jpg, &DecodeLimits::default()).unwrap();
        let pillow = decode_file(&jpg.with_extension("png"), &DecodeLimits::default()).unwrap();
        let name = jpg.file_name().unwrap().to_string_lossy().to_string();
        if ours.dimensions() != pillow.dimensions() {
            failures.push(format!(
                "{name}: {:?} vs {:?}",
                ours.dimensions(),
                pillow.dimensions()
            ));
            continue;
        }
        let (max, differing) = level_diff(&ours, &pillow);
        println!("{name}: max {max} levels, {differing} values differ");
        if max != 0 {
            failures.push(format!(
                "{name}: max {max} levels, {differing} values differ"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "not bit-identical to Pillow: {failures:#?}"
    );
}

#[test]
fn golden_jpegs_decode_natively_and_others_fall_back() {
    for name in ["rocket.jpg", "hubble_deep_field.jpg"] {
        let bytes = std::fs::read(golden(&format!("images/{name}"))).unwrap();
        assert!(image::jpeg_decoded_natively(&bytes), "{name}");
    }
    // Progressive and RGB-coded JPEGs go to the `image` crate, which still decodes them
    // (a few levels off libjpeg: its own IDCT).
    let dir = npurt_tests::project_root().join("tests/data/jpeg/fallback");
    for name in ["progressive", "rgb_adobe"] {
        let jpg = dir.join(format!("{name}.jpg"));
        assert!(
            !image::jpeg_decoded_natively(&std::fs::read(&jpg).unwrap()),
            "{name}"
        );
        let ours = decode_file(&jpg, &DecodeLimits::default()).unwrap();
        let pillow = decode_file(&jpg.with_extension("png"), &DecodeLimits::default()).unwrap();
        assert_eq!(ours.dimensions(), pillow.dimensions());
        let (max, differing) = level_diff(&ours, &pillow);
        println!("fallback {name}: max {max} levels, {differing} values differ from Pillow");
        assert!(max <= 4, "fallback {name}: {max} levels off Pillow");
    }
    assert!(!image::jpeg_decoded_natively(b"not a jpeg"));
}

/// hubble_deep_field.jpg (baseline 4:4:4, Photoshop, EXIF and an Adobe marker) has no
/// Pillow reference in the goldens. Pillow 13.0.0's decode of it
/// (`ImageOps.exif_transpose(Image.open(p)).convert("RGB").tobytes()`) hashes to
/// `HUBBLE_PILLOW_FNV1A`, and npurt's must too; as a sanity check on top, it is close to
/// the `image` crate's decode (zune-jpeg: 3 levels at most, ~1% of values differ, its
/// IDCT's rounding).
const HUBBLE_PILLOW_FNV1A: u64 = 0xfb39_eb1a_d7fb_f8d4;

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
fn hubble_decode_matches_pillow_and_is_close_to_the_image_crates() {
    use ::image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
    let bytes = std::fs::read(golden("images/hubble_deep_field.jpg")).unwrap();
    let ours = decode_bytes(&bytes, "hubble_deep_field.jpg", &DecodeLimits::default()).unwrap();
    let mut decoder = ImageReader::with_format(std::io::Cursor::new(&bytes), ImageFormat::Jpeg)
        .into_decoder()
        .unwrap();
    let orientation = decoder.orientation().unwrap();
    let mut theirs = DynamicImage::from_decoder(decoder).unwrap();
    theirs.apply_orientation(orientation);
    let theirs = theirs.into_rgb8();
    assert_eq!(ours.dimensions(), theirs.dimensions());
    let (max, differing) = level_diff(&ours, &theirs);
    let n = ours.as_raw().len();
    println!("hubble_deep_field.jpg: npurt vs image crate: max {max} levels, {differing} of {n} values differ");
    assert_eq!(
        fnv1a(ours.as_raw()),
        HUBBLE_PILLOW_FNV1A,
        "hubble: not Pillow's decode"
    );
    assert!(max <= 3, "hubble: {max} levels off the image crate");
    assert!(
        differing * 50 < n,
        "hubble: {differing} of {n} values differ"
    );
}

/// Levels of one golden tile (normalised floats back to uint8) as an RGB8 image.
fn golden_tile_levels(t: &[f32]) -> RgbImage {
    let plane = 384 * 384;
    RgbImage::from_fn(384, 384, |x, y| {
        let i = (y * 384 + x) as usize;
        [0, 1, 2]
            .map(|c| to_level(t[c * plane + i]).clamp(0, 255) as u8)
            .into()
    })
}

/// (max abs difference in levels, number of differing values)
fn level_diff(a: &RgbImage, b: &RgbImage) -> (i32, usize) {
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .fold((0, 0), |(max, n), (x, y)| {
            let e = (i32::from(*x) - i32::from(*y)).abs();
            (max.max(e), n + usize::from(e != 0))
        })
}

#[test]
fn resampler_alone_is_bit_identical_to_pil_bicubic() {
    // Each case is one PIL resize of a decoded image and nothing else: the thumbnails
    // (tile 0) of both preprocess goldens, and siglip_tiny's astronaut (512 -> 384).
    let astronaut = decode_file(&golden("images/astronaut.png"), &DecodeLimits::default()).unwrap();
    let (_, siglip) = GoldenTensors::open("siglip_tiny/io.safetensors").f32("pixel_values");
    let (_, chelsea) = GoldenTensors::open("preprocess/chelsea.safetensors").f32("pixel_values");
    let (_, rocket) = GoldenTensors::open("preprocess/rocket.safetensors").f32("pixel_values");
    let tile = 3 * 384 * 384;
    for (name, img, reference) in [
        ("astronaut 512x512", astronaut, &siglip[..tile]),
        ("chelsea 451x300", golden_image("chelsea"), &chelsea[..tile]),
        (
            "rocket 640x427 (Pillow decode)",
            rocket_as_pillow_decodes_it(),
            &rocket[..tile],
        ),
    ] {
        let ours = resize_bicubic(&img, 384, 384);
        let (max, differing) = level_diff(&ours, &golden_tile_levels(reference));
        println!("{name} -> 384x384 bicubic vs PIL: max {max} levels, {differing} values differ");
        assert_eq!(max, 0, "{name}: resampler differs from PIL by {max} levels");
    }
}

#[test]
fn resampler_edge_cases() {
    // Identity, upscale, 1-pixel images and extreme aspect ratios: no panic, right size,
    // and a constant image stays constant (weights sum to one in fixed point).
    let grey = RgbImage::from_pixel(7, 5, [90, 140, 200].into());
    for (w, h) in [
        (7, 5),
        (1, 1),
        (384, 384),
        (3, 700),
        (700, 3),
        (14, 5),
        (7, 10),
    ] {
        let out = resize_bicubic(&grey, w, h);
        assert_eq!(out.dimensions(), (w, h));
        assert!(
            out.pixels().all(|p| p.0 == [90, 140, 200]),
            "{w}x{h} changed a constant image"
        );
    }
    let one = RgbImage::from_pixel(1, 1, [255, 0, 7].into());
    assert!(resize_bicubic(&one, 5, 9)
        .pixels()
        .all(|p| p.0 == [255, 0, 7]));
    let ramp = RgbImage::from_fn(64, 1, |x, _| [(x * 4) as u8, 0, 255].into());
    assert_eq!(resize_bicubic(&ramp, 64, 1), ramp, "same size is a copy");
}

#[test]
fn preprocess_refuses_an_image_of_another_size() {
    let p = plan(640, 480, &TilingOptions::default()).unwrap();
    let img = RgbImage::new(480, 640);
    assert!(matches!(
        preprocess(&img, &p),
        Err(ImageError::PlanMismatch { .. })
    ));
    // A hand-edited plan whose parts disagree is refused, not indexed past.
    let img = RgbImage::new(640, 480);
    for bad in [
        ImagePlan {
            tiles: 2,
            ..p.clone()
        },
        ImagePlan {
            grid: [9, 9],
            ..p.clone()
        },
        ImagePlan {
            resized: [2000, 480],
            ..p.clone()
        },
        ImagePlan {
            padding: [0, 0, 0, 0],
            ..p.clone()
        },
        ImagePlan {
            tile: 0,
            ..p.clone()
        },
    ] {
        match preprocess(&img, &bad) {
            Err(ImageError::InvalidOption { option: "plan", .. }) => {}
            other => panic!("{bad:?}: expected an inconsistent-plan error, got {other:?}"),
        }
    }
}

#[test]
fn webp_decodes_like_the_png_it_was_made_from() {
    let png = decode_file(&golden("images/chelsea.png"), &DecodeLimits::default()).unwrap();
    let mut webp = Vec::new();
    ::image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
        .encode(
            png.as_raw(),
            png.width(),
            png.height(),
            ::image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    let h = image::header_from_bytes(&webp, "chelsea.webp", &DecodeLimits::default()).unwrap();
    assert_eq!(
        (h.format, h.width, h.height),
        (SourceFormat::WebP, 451, 300)
    );
    let back = decode_bytes(&webp, "chelsea.webp", &DecodeLimits::default()).unwrap();
    assert!(back == png, "lossless WebP round trip changed pixels");
}

// ---------------------------------------------------------------------------------------
// Bad inputs

/// A file in a fresh temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let dir = std::env::temp_dir().join(format!("npurt-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A well-formed PNG header (correct CRCs) claiming `width x height` RGB8 pixels, with a
/// tiny valid IDAT so that the header itself parses.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, filter 0, no interlace
    png_chunk(&mut png, b"IHDR", &ihdr);
    // zlib: an empty final stored block, adler32 = 1
    png_chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0, 0, 0, 1],
    );
    png_chunk(&mut png, b"IEND", &[]);
    png
}

fn assert_err_names(e: &ImageError, needles: &[&str]) {
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "`{n}` not in the error message: {msg}");
    }
}

#[test]
fn huge_png_header_is_refused_before_any_allocation() {
    let f = TempFile::new("huge.png", &png_claiming(100_000, 100_000));
    let limits = DecodeLimits::default();
    for (what, result) in [
        (
            "decode_file",
            measured(|| decode_file(&f.0, &limits).map(|_| ())),
        ),
        (
            "read_header",
            measured(|| read_header(&f.0, &limits).map(|_| ())),
        ),
    ] {
        let (r, took, largest) = result;
        let e = r.expect_err(what);
        match &e {
            ImageError::TooManyPixels {
                width,
                height,
                pixels,
                limit,
                ..
            } => {
                assert_eq!(
                    (*width, *height, *pixels),
                    (100_000, 100_000, 10_000_000_000)
                );
                assert_eq!(*limit, npurt_runtime::image::DEFAULT_MAX_PIXELS);
            }
            other => panic!("{what}: expected TooManyPixels, got {other:?}"),
        }
        assert_err_names(&e, &["huge.png", "100000x100000", "too large"]);
        assert!(took < Duration::from_secs(1), "{what} took {took:?}");
        assert!(
            largest < (1 << 20),
            "{what}: largest allocation {largest} bytes"
        );
    }
    // The limit is configurable: a small one refuses a real photo.
    let small = DecodeLimits {
        max_pixels: 100_000,
        ..Default::default()
    };
    let e = decode_file(&golden("images/chelsea.png"), &small).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::TooManyPixels {
                width: 451,
                height: 300,
                ..
            }
        ),
        "{e}"
    );
    // And the default admits a 50-megapixel phone photo (8160x6120), portrait or not.
    for (w, h) in [(8160, 6120), (6120, 8160)] {
        let hd = image::header_from_bytes(&png_claiming(w, h), "50mp.png", &limits).unwrap();
        assert_eq!((hd.width, hd.height), (w, h));
    }
}

#[test]
fn zero_sized_png_is_a_typed_error() {
    let f = TempFile::new("empty-size.png", &png_claiming(0, 0));
    let e = decode_file(&f.0, &DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::ZeroSized {
                width: 0,
                height: 0,
                ..
            }
        ),
        "{e:?}"
    );
    assert_err_names(&e, &["empty-size.png", "zero-sized"]);
    let e = read_header(&f.0, &DecodeLimits::default()).unwrap_err();
    assert!(matches!(e, ImageError::ZeroSized { .. }), "{e:?}");
    let e = decode_bytes(&png_claiming(640, 0), "tall.png", &DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::ZeroSized {
                width: 640,
                height: 0,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_text_file_is_not_an_image() {
    // Named .png on purpose: the format comes from the content.
    let f = TempFile::new("notes.png", b"These are my holiday notes, not a picture.\n");
    for e in [
        decode_file(&f.0, &DecodeLimits::default()).unwrap_err(),
        read_header(&f.0, &DecodeLimits::default()).unwrap_err(),
    ] {
        assert!(matches!(e, ImageError::NotAnImage { .. }), "{e:?}");
        assert_err_names(&e, &["notes.png", "not an image"]);
    }
    let empty = TempFile::new("empty.jpg", b"");
    let e = decode_file(&empty.0, &DecodeLimits::default()).unwrap_err();
    assert!(matches!(e, ImageError::NotAnImage { .. }), "{e:?}");
    let missing = decode_file(
        "/nonexistent/npurt/photo.jpg".as_ref(),
        &DecodeLimits::default(),
    )
    .unwrap_err();
    assert!(matches!(missing, ImageError::Io { .. }), "{missing:?}");
    assert_err_names(&missing, &["/nonexistent/npurt/photo.jpg"]);
}

#[test]
fn corrupt_png_is_a_typed_error() {
    // A real PNG with its image data overwritten.
    let mut png = std::fs::read(golden("images/chelsea.png")).unwrap();
    let n = png.len();
    for b in &mut png[200..n - 100] {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    let f = TempFile::new("scrambled.png", &png);
    let e = decode_file(&f.0, &DecodeLimits::default()).unwrap_err();
    assert!(matches!(e, ImageError::Corrupt { .. }), "{e:?}");
    assert_err_names(&e, &["scrambled.png", "corrupt"]);
    // Only a signature.
    let e = decode_bytes(b"\x89PNG\r\n\x1a\n", "sig.png", &DecodeLimits::default()).unwrap_err();
    assert!(matches!(e, ImageError::Corrupt { .. }), "{e:?}");
}

#[test]
fn truncated_png_and_jpeg_are_typed_errors() {
    for name in [
        "chelsea.png",
        "rocket.jpg",
        "astronaut.png",
        "hubble_deep_field.jpg",
    ] {
        let bytes = std::fs::read(golden(&format!("images/{name}"))).unwrap();
        // Cut in the middle of the pixel data, in the header, and (JPEG) just before the
        // end-of-image marker. (A PNG missing only its IEND trailer has all its pixels
        // and decodes, as in PIL.)
        let mut cuts = vec![bytes.len() / 2, 100];
        if name.ends_with(".jpg") {
            cuts.push(bytes.len() - 2);
        }
        for cut in cuts {
            let f = TempFile::new(&format!("cut-{cut}-{name}"), &bytes[..cut]);
            let (r, took, _) = measured(|| decode_file(&f.0, &DecodeLimits::default()));
            let Err(e) = r else {
                panic!(
                    "{name} cut at {cut} of {} bytes decoded without error",
                    bytes.len()
                )
            };
            assert!(
                matches!(e, ImageError::Corrupt { .. }),
                "{name} cut at {cut}: {e:?}"
            );
            assert_err_names(&e, &[&format!("cut-{cut}-{name}"), "truncated"]);
            assert!(
                took < Duration::from_secs(5),
                "{name} cut at {cut} took {took:?}"
            );
        }
        // The header of the half file still reads: image-plan needs only that.
        let f = TempFile::new(&format!("half-{name}"), &bytes[..bytes.len() / 2]);
        read_header(&f.0, &DecodeLimits::default()).unwrap();
    }
}

/// A JPEG of `width x height` whose left half is red and right half blue, with an APP1
/// EXIF segment carrying `orientation` inserted after SOI.
fn jpeg_with_orientation(width: u32, height: u32, orientation: u16) -> Vec<u8> {
    let img = RgbImage::from_fn(width, height, |x, _| {
        if x < width / 2 {
            [255, 0, 0].into()
        } else {
            [0, 0, 255].into()
        }
    });
    let mut jpeg = Vec::new();
    ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode(
            img.as_raw(),
            width,
            height,
            ::image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    // TIFF, big-endian: header, IFD0 with one entry (0x0112 Orientation, SHORT, 1), no next IFD.
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01".to_vec();
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_is_applied() {
    let limits = DecodeLimits::default();
    // 6 = rotate 90 degrees clockwise to display: a 32x16 picture shows as 16x32, and its
    // left (red) half becomes the top.
    let f = TempFile::new("rotated.jpg", &jpeg_with_orientation(32, 16, 6));
    let img = decode_file(&f.0, &limits).unwrap();
    assert_eq!(img.dimensions(), (16, 32));
    let [r, _, b] = img.get_pixel(8, 4).0;
    assert!(
        r > 200 && b < 60,
        "top should be red, got {:?}",
        img.get_pixel(8, 4)
    );
    let [r, _, b] = img.get_pixel(8, 28).0;
    assert!(
        b > 200 && r < 60,
        "bottom should be blue, got {:?}",
        img.get_pixel(8, 28)
    );
    let h = read_header(&f.0, &limits).unwrap();
    assert_eq!(
        (
            h.format,
            h.width,
            h.height,
            h.stored_width,
            h.stored_height,
            h.exif_orientation
        ),
        (SourceFormat::Jpeg, 16, 32, 32, 16, 6)
    );
    // The plan of the header equals the plan of the decoded image.
    let opts = TilingOptions::default();
    assert_eq!(
        plan(h.width, h.height, &opts).unwrap(),
        plan(16, 32, &opts).unwrap()
    );
    // 1 = as stored.
    let plain = decode_bytes(&jpeg_with_orientation(32, 16, 1), "plain.jpg", &limits).unwrap();
    assert_eq!(plain.dimensions(), (32, 16));
    // 3 = rotate 180: left red half moves right.
    let upside = decode_bytes(&jpeg_with_orientation(32, 16, 3), "180.jpg", &limits).unwrap();
    assert_eq!(upside.dimensions(), (32, 16));
    assert!(upside.get_pixel(28, 8).0[0] > 200 && upside.get_pixel(4, 8).0[2] > 200);
}

#[test]
fn golden_headers_read_without_decoding() {
    let limits = DecodeLimits::default();
    for (name, format, w, h) in [
        ("chelsea.png", SourceFormat::Png, 451, 300),
        ("rocket.jpg", SourceFormat::Jpeg, 640, 427),
        ("astronaut.png", SourceFormat::Png, 512, 512),
    ] {
        let hd = read_header(&golden(&format!("images/{name}")), &limits).unwrap();
        assert_eq!((hd.format, hd.width, hd.height), (format, w, h), "{name}");
    }
}
