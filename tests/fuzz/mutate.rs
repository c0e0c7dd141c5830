//! Mutations. Byte-level ones (bit flips, interesting bytes, little-endian u32/u64
//! fields set to boundary values, truncation, chunk duplication/removal, splicing) for
//! binary formats; value-level ones for JSON (a header's numbers set to boundaries,
//! keys dropped, types swapped), which byte flips rarely reach past the parser; and
//! token insertion for Jinja templates.

use super::rng::{Draws, Rng};
use serde_json::{json, Value};

/// Bytes that sit at edges: sign bits, all-ones, ASCII structure.
const BYTES: [u8; 12] = [
    0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'}', b'[', b',', b'\\', b'0',
];
const U32S: [u32; 10] = [
    0,
    1,
    2,
    0xff,
    0xffff,
    0x8000_0000,
    0x7fff_ffff,
    0xffff_fffe,
    0xffff_ffff,
    31,
];
const U64S: [u64; 11] = [
    0,
    1,
    2,
    1 << 31,
    1 << 32,
    (1 << 32) - 1,
    1 << 40,
    1 << 62,
    1 << 63,
    i64::MAX as u64,
    u64::MAX,
];

/// Applies 1 to 4 stacked byte mutations; `others` are splice partners (other seeds),
/// `max_len` bounds growth.
pub fn bytes(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>], max_len: usize) {
    for _ in 0..1 + rng.below(4) {
        one_byte_mutation(rng, data, others);
    }
    data.truncate(max_len);
}

fn one_byte_mutation(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>]) {
    if data.is_empty() {
        data.push(*rng.pick(&BYTES));
        return;
    }
    let n = data.len();
    let at = rng.below(n);
    match rng.below(12) {
        0 => data[at] ^= 1 << rng.below(8),
        1 => data[at] = *rng.pick(&BYTES),
        2 => data[at] = rng.next_u64() as u8,
        3 => put(data, at, &rng.pick(&U32S).to_le_bytes()),
        4 => put(data, at, &rng.pick(&U64S).to_le_bytes()),
        5 => {
            // Small arithmetic on a u32 field: off-by-one lengths and counts.
            let mut b = [0u8; 4];
            let len = (n - at).min(4);
            b[..len].copy_from_slice(&data[at..at + len]);
            let v = u32::from_le_bytes(b)
                .wrapping_add(rng.below(33) as u32)
                .wrapping_sub(16);
            put(data, at, &v.to_le_bytes());
        }
        6 => data.truncate(at),
        7 => {
            let len = 1 + rng.below((n - at).min(64));
            data.drain(at..at + len);
        }
        8 => {
            // Duplicate a chunk: repeated records, doubled headers.
            let len = 1 + rng.below((n - at).min(256));
            let chunk = data[at..at + len].to_vec();
            let to = rng.below(n + 1);
            data.splice(to..to, chunk);
        }
        9 => {
            let len = 1 + rng.below(16);
            let junk: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            data.splice(at..at, junk);
        }
        10 if !others.is_empty() => {
            // Splice: this input's head, another seed's tail.
            let other = rng.pick(others);
            if !other.is_empty() {
                let from = rng.below(other.len());
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
        }
        _ => {
            // Copy a chunk over another place in the same input.
            let len = 1 + rng.below((n - at).min(64));
            let chunk = data[at..at + len].to_vec();
            let to = rng.below(n);
            put(data, to, &chunk);
        }
    }
}

/// Overwrites `data[at..]` with `v`, clipped at the end.
fn put(data: &mut [u8], at: usize, v: &[u8]) {
    let len = v.len().min(data.len() - at);
    data[at..at + len].copy_from_slice(&v[..len]);
}

/// Sets the u32 or u64 field at `at` (a known offset: a count, a length, a type id) to a
/// boundary value.
pub fn field(rng: &mut Rng, data: &mut [u8], at: usize) {
    if at >= data.len() {
        return;
    }
    if rng.one_in(2) {
        put(data, at, &rng.pick(&U32S).to_le_bytes());
    } else {
        put(data, at, &rng.pick(&U64S).to_le_bytes());
    }
}

/// JSON values at edges: integers around 2^31/2^32/2^53/2^63/2^64, huge and tiny
/// floats, negative numbers, empty and long strings, path tricks, wrong types.
fn interesting_value(rng: &mut Rng) -> Value {
    match rng.below(24) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(1),
        3 => json!(2_147_483_648u64),
        4 => json!(4_294_967_295u64),
        5 => json!(4_294_967_296u64),
        6 => json!(9_007_199_254_740_993u64),
        7 => json!(9_223_372_036_854_775_808u64),
        8 => json!(u64::MAX),
        9 => json!(1e308),
        10 => json!(-1e308),
        11 => json!(1e-320),
        12 => json!(0.5),
        13 => json!(""),
        14 => json!("a".repeat(1000)),
        15 => json!("../../../../etc/passwd"),
        16 => json!("\u{0}"),
        17 => Value::Null,
        18 => json!(true),
        19 => json!([]),
        20 => json!({}),
        21 => json!([0, 1, u64::MAX]),
        22 => json!(i64::MIN),
        _ => json!(rng.next_u64() % 100_000),
    }
}

/// How many nodes `v` has (itself included).
fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// The `k`-th node of `v` in pre-order.
fn nth_node<'a>(v: &'a mut Value, k: &mut usize) -> Option<&'a mut Value> {
    if *k == 0 {
        return Some(v);
    }
    *k -= 1;
    match v {
        Value::Array(a) => a.iter_mut().find_map(|c| nth_node(c, k)),
        Value::Object(o) => o.values_mut().find_map(|c| nth_node(c, k)),
        _ => None,
    }
}

/// Applies 1 to 3 value-level mutations to a JSON document.
pub fn json_value(rng: &mut Rng, v: &mut Value) {
    for _ in 0..1 + rng.below(3) {
        let mut k = rng.below(count_nodes(v));
        let donor = if rng.one_in(4) {
            // A value moved from elsewhere in the document (a string where a number
            // was, an object where a list was).
            let mut j = rng.below(count_nodes(v));
            nth_node(v, &mut j).cloned()
        } else {
            None
        };
        let Some(node) = nth_node(v, &mut k) else {
            continue;
        };
        let op = rng.below(6);
        match node {
            Value::Object(o) if op == 0 && !o.is_empty() => {
                let key = o
                    .keys()
                    .nth(rng.below(o.len()))
                    .cloned()
                    .unwrap_or_default();
                o.remove(&key);
            }
            Value::Array(a) if op == 1 && !a.is_empty() => {
                let i = rng.below(a.len());
                if rng.one_in(2) {
                    a.remove(i);
                } else {
                    let dup = a[i].clone();
                    a.insert(i, dup);
                }
            }
            Value::Number(n) if op == 2 => {
                // Near the old value: off by one, scaled, negated.
                let x = n.as_f64().unwrap_or(0.0);
                let y = match rng.below(4) {
                    0 => x + 1.0,
                    1 => x - 1.0,
                    2 => x * 1000.0,
                    _ => -x,
                };
                *node = serde_json::Number::from_f64(y).map_or(Value::Null, Value::Number);
            }
            _ => match donor {
                Some(d) if op == 3 => *node = d,
                _ => *node = interesting_value(rng),
            },
        }
    }
}

/// A JSON seed mutated: usually at the value level (re-serialized, compact or pretty),
/// sometimes byte-level on the text, sometimes both.
pub fn json_text(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>], max_len: usize) -> Vec<u8> {
    let mut out = match serde_json::from_slice::<Value>(seed) {
        Ok(mut v) if !rng.one_in(4) => {
            json_value(rng, &mut v);
            if rng.one_in(2) {
                serde_json::to_vec(&v).unwrap_or_default()
            } else {
                serde_json::to_vec_pretty(&v).unwrap_or_default()
            }
        }
        _ => seed.to_vec(),
    };
    if rng.one_in(3) {
        bytes(rng, &mut out, others, max_len);
    }
    out.truncate(max_len);
    out
}

/// Jinja fragments a hostile or broken template might hold: unbalanced blocks, loops
/// and string products that grow without bound, recursion, filters with huge widths,
/// undefined names, calls of the helpers the chat environment adds, strings and lists
/// doubled in a loop (one step each, any size: the render's memory cap stops them).
const JINJA: [&str; 35] = [
    "{%", "%}", "{{", "}}", "{#", "#}", "{% endfor %}", "{% endif %}", "{% else %}",
    "{% for i in range(1000000) %}x{% endfor %}",
    "{% for i in range(100) %}{% for j in range(100) %}{% for k in range(100) %}x{% endfor %}{% endfor %}{% endfor %}",
    // 10 MB, not minijinja's 100 MB cap on one repetition: that one step takes ~0.15 s
    // and ~200 MB (two copies) on its own, which a loaded CI machine stretches past the
    // deadline; the output limit's own test covers it (models/src/chat.rs).
    "{{ 'x' * 10000000 }}",
    "{{ 'ab' * 4294967296 }}",
    "{{ messages * 100000 }}",
    "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}",
    "{{ messages[0]['content'] | indent(100000000) }}",
    "{{ messages | tojson(indent=1000000) }}",
    "{{ raise_exception('boom') }}",
    "{{ strftime_now('%Y' * 100000) }}",
    "{{ undefined_name.attr }}",
    "{{ messages[9999] }}",
    "{{ messages[0]['content'][::-1] }}",
    "{{ (messages | length) / 0 }}",
    "{{ 9223372036854775807 + 1 }}",
    "{{ range(9223372036854775807) | list }}",
    "{% set x = namespace(a=1) %}{% set x.a = x.a * 99999999999 %}{{ x.a }}",
    "{{ message['content'].split('') }}",
    "{{ '%s' % messages }}",
    "{% include 'other' %}",
    "{% extends 'base' %}",
    "{{ bos_token ~ eos_token }}",
    "{% filter upper %}",
    "{% set ns = namespace(a='x') %}{% for i in range(64) %}{% set ns.a = ns.a ~ ns.a %}{% endfor %}",
    "{% set ns = namespace(a='x') %}{% for i in range(64) %}{% set ns.a = ns.a | replace('x', 'xx') %}{% endfor %}",
    "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
];

/// A template mutated: Jinja fragments inserted at random places, byte mutations, or
/// both (invalid UTF-8 is fine: the target decodes lossily, as a loader reading a file
/// would reject or replace it).
pub fn template_text(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>], max_len: usize) -> Vec<u8> {
    let mut out = seed.to_vec();
    if !rng.one_in(3) {
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(out.len() + 1);
            let frag = rng.pick(&JINJA).as_bytes();
            out.splice(at..at, frag.iter().copied());
        }
    }
    if rng.one_in(2) {
        bytes(rng, &mut out, others, max_len);
    }
    out.truncate(max_len);
    out
}
