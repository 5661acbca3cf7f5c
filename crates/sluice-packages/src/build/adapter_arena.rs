//! A WASI adapter allocator for Go filters, added to the core module after `go build`.
//!
//! The WASI preview 1 adapter allocates its state (and a stack for itself) through the main
//! module's `cabi_realloc_adapter`, and does so on the first WASI call, which Go's runtime makes
//! while it is still starting: no Go function can be entered then, and memory from Go's heap
//! could later be reused by its collector. The Go SDK therefore reserves a static array (its
//! marker is [`MARKER`], followed by the array's size as a little-endian u32) and this module adds
//! a bump allocator over that array, in plain Wasm, as `cabi_realloc_adapter`.

use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, Encode, ExportKind, ExportSection, Function, FunctionSection, GlobalSection,
    GlobalType, Instruction, Module, RawSection, ValType,
};
use wasmparser::{DataKind, ExternalKind, Operator, Parser, Payload, TypeRef};

/// The bytes the Go SDK's adapter arena starts with (sdk/go/abi.go).
const MARKER: &[u8] = b"sluice:wasi-adapter-arena:v1";

/// The export the component encoder hands the adapter as its `cabi_realloc`.
const EXPORT_NAME: &str = "cabi_realloc_adapter";

/// What the rewrite needs to know about the module.
#[derive(Debug, Default)]
struct Layout {
    imported_functions: u32,
    imported_globals: u32,
    defined_functions: u32,
    defined_globals: u32,
    /// The type of the module's `cabi_realloc` (the same signature).
    realloc_type: Option<u32>,
    /// Address and size of the arena.
    arena: Option<(u32, u32)>,
}

/// Returns `module` with a `cabi_realloc_adapter` export that allocates from the Go SDK's
/// adapter arena.
pub(super) fn add_adapter_allocator(module: &[u8]) -> Result<Vec<u8>, String> {
    let layout = read_layout(module)?;
    let realloc_type = layout.realloc_type.ok_or("the module exports no cabi_realloc (is it built on the Go SDK?)")?;
    let (arena_start, arena_size) = layout.arena.ok_or(
        "the module has no adapter arena: it does not use the Go SDK (sluice.dev/sluice), or the SDK is too old",
    )?;
    let allocator_index = layout.imported_functions + layout.defined_functions;
    let next_global = layout.imported_globals + layout.defined_globals;
    let arena_end = arena_start.checked_add(arena_size).ok_or("the adapter arena's size is corrupt")?;

    let mut function = FunctionSection::new();
    function.function(realloc_type);
    let mut global = GlobalSection::new();
    global.global(
        GlobalType { val_type: ValType::I32, mutable: true, shared: false },
        &ConstExpr::i32_const(arena_start as i32),
    );
    let mut export = ExportSection::new();
    export.export(EXPORT_NAME, ExportKind::Func, allocator_index);
    let mut code = CodeSection::new();
    code.function(&bump_allocator(next_global, arena_end));

    let mut out = Module::new();
    let mut saw_globals = false;
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(|err| err.to_string())?;
        let Some((id, range)) = payload.as_section() else { continue };
        let contents = &module[range.start as usize..range.end as usize];
        let appended = match &payload {
            Payload::FunctionSection(_) => Some(item_bytes(&function)),
            Payload::GlobalSection(_) => {
                saw_globals = true;
                Some(item_bytes(&global))
            }
            Payload::ExportSection(_) => Some(item_bytes(&export)),
            Payload::CodeSectionStart { .. } => Some(item_bytes(&code)),
            _ => None,
        };
        let data = match appended {
            Some(item) => append_item(contents, &item)?,
            None => contents.to_vec(),
        };
        out.section(&RawSection { id, data: &data });
    }
    if !saw_globals {
        return Err("the module has no global section (not a Go module?)".into());
    }
    Ok(out.finish())
}

/// `cabi_realloc_adapter(old, old_size, align, new_size) -> ptr`: bumps the global `next` up to
/// `arena_end` (past it, traps), copying `old_size` bytes when reallocating.
fn bump_allocator(next: u32, arena_end: u32) -> Function {
    const OLD: u32 = 0;
    const OLD_SIZE: u32 = 1;
    const ALIGN: u32 = 2;
    const NEW_SIZE: u32 = 3;
    const START: u32 = 4;
    let mut function = Function::new([(1, ValType::I32)]);
    for instruction in [
        // start = (next + align - 1) & -align
        Instruction::GlobalGet(next),
        Instruction::LocalGet(ALIGN),
        Instruction::I32Add,
        Instruction::I32Const(1),
        Instruction::I32Sub,
        Instruction::I32Const(0),
        Instruction::LocalGet(ALIGN),
        Instruction::I32Sub,
        Instruction::I32And,
        Instruction::LocalTee(START),
        // if start + new_size > arena_end: trap
        Instruction::LocalGet(NEW_SIZE),
        Instruction::I32Add,
        Instruction::I32Const(arena_end as i32),
        Instruction::I32GtU,
        Instruction::If(BlockType::Empty),
        Instruction::Unreachable,
        Instruction::End,
        // next = start + new_size
        Instruction::LocalGet(START),
        Instruction::LocalGet(NEW_SIZE),
        Instruction::I32Add,
        Instruction::GlobalSet(next),
        // if old != 0: copy the old allocation over
        Instruction::LocalGet(OLD),
        Instruction::If(BlockType::Empty),
        Instruction::LocalGet(START),
        Instruction::LocalGet(OLD),
        Instruction::LocalGet(OLD_SIZE),
        Instruction::MemoryCopy { src_mem: 0, dst_mem: 0 },
        Instruction::End,
        Instruction::LocalGet(START),
        Instruction::End,
    ] {
        function.instruction(&instruction);
    }
    function
}

fn read_layout(module: &[u8]) -> Result<Layout, String> {
    let mut layout = Layout::default();
    let mut function_types = Vec::new();
    let mut realloc_function = None;
    for payload in Parser::new(0).parse_all(module) {
        match payload.map_err(|err| err.to_string())? {
            Payload::ImportSection(imports) => {
                for import in imports.into_imports() {
                    match import.map_err(|err| err.to_string())?.ty {
                        TypeRef::Func(_) => layout.imported_functions += 1,
                        TypeRef::Global(_) => layout.imported_globals += 1,
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(functions) => {
                for ty in functions {
                    function_types.push(ty.map_err(|err| err.to_string())?);
                }
            }
            Payload::GlobalSection(globals) => layout.defined_globals = globals.count(),
            Payload::ExportSection(exports) => {
                for export in exports {
                    let export = export.map_err(|err| err.to_string())?;
                    if export.name == EXPORT_NAME {
                        return Err(format!("the module already exports {EXPORT_NAME}"));
                    }
                    if export.name == "cabi_realloc" && export.kind == ExternalKind::Func {
                        realloc_function = Some(export.index);
                    }
                }
            }
            Payload::DataSection(segments) => {
                for segment in segments {
                    let segment = segment.map_err(|err| err.to_string())?;
                    let DataKind::Active { offset_expr, .. } = segment.kind else { continue };
                    let Some(Ok(Operator::I32Const { value: offset })) =
                        offset_expr.get_operators_reader().into_iter().next()
                    else {
                        continue;
                    };
                    for position in find_all(segment.data, MARKER) {
                        if layout.arena.is_some() {
                            return Err("the module holds the adapter arena's marker twice".into());
                        }
                        // Trailing zero bytes of the size may be left out of the segment.
                        let mut size = [0u8; 4];
                        let after = &segment.data[position + MARKER.len()..];
                        let len = after.len().min(4);
                        size[..len].copy_from_slice(&after[..len]);
                        layout.arena = Some((offset as u32 + position as u32, u32::from_le_bytes(size)));
                    }
                }
            }
            _ => {}
        }
    }
    layout.defined_functions = function_types.len() as u32;
    layout.realloc_type = realloc_function.and_then(|index| {
        index.checked_sub(layout.imported_functions).and_then(|defined| function_types.get(defined as usize).copied())
    });
    Ok(layout)
}

fn find_all<'a>(haystack: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    haystack.windows(needle.len()).enumerate().filter(move |(_, window)| *window == needle).map(|(at, _)| at)
}

/// The encoding of a one-item section's item, without the section's size and count.
fn item_bytes(section: &impl Encode) -> Vec<u8> {
    let mut encoded = Vec::new();
    section.encode(&mut encoded);
    let (_, size_len) = read_u32_leb(&encoded).expect("wasm-encoder writes a size");
    let (_, count_len) = read_u32_leb(&encoded[size_len..]).expect("wasm-encoder writes a count");
    encoded[size_len + count_len..].to_vec()
}

/// A vector section's contents with one more item at the end.
fn append_item(contents: &[u8], item: &[u8]) -> Result<Vec<u8>, String> {
    let (count, count_len) = read_u32_leb(contents).ok_or("a section's item count is malformed")?;
    let mut data = Vec::with_capacity(contents.len() + item.len() + 5);
    (count + 1).encode(&mut data);
    data.extend_from_slice(&contents[count_len..]);
    data.extend_from_slice(item);
    Ok(data)
}

fn read_u32_leb(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut value = 0u32;
    for (index, byte) in bytes.iter().take(5).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, index + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module shaped like Go's output: one import, a cabi_realloc, a global, the marker in data.
    fn go_like_module(marker: &[u8]) -> Vec<u8> {
        let wat = format!(
            r#"(module
                (import "wasi_snapshot_preview1" "random_get" (func (param i32 i32) (result i32)))
                (memory (export "memory") 2)
                (global $sp (mut i32) (i32.const 65536))
                (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 0)
                (data (i32.const 1000) "\01\02{marker}\00\00\01\00"))"#,
            marker = String::from_utf8_lossy(marker),
        );
        wat::parse_str(wat).unwrap()
    }

    #[test]
    fn the_allocator_hands_out_the_arena_aligned_and_traps_past_it() {
        let module = add_adapter_allocator(&go_like_module(MARKER)).unwrap();
        wasmparser::Validator::new().validate_all(&module).expect("the rewritten module is valid");

        let engine = wasmtime::Engine::default();
        let compiled = wasmtime::Module::new(&engine, &module).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        let mut linker = wasmtime::Linker::new(&engine);
        linker.func_wrap("wasi_snapshot_preview1", "random_get", |_: i32, _: i32| 0i32).unwrap();
        let instance = linker.instantiate(&mut store, &compiled).unwrap();
        let allocate =
            instance.get_typed_func::<(i32, i32, i32, i32), i32>(&mut store, EXPORT_NAME).expect("the export exists");
        let start = 1000 + 2; // the marker's position; the arena is 64 KiB (0x10000)
        assert_eq!(allocate.call(&mut store, (0, 0, 1, 3)).unwrap(), start);
        assert_eq!(allocate.call(&mut store, (0, 0, 8, 16)).unwrap(), (start + 3 + 7) & !7, "aligned up");
        // Reallocation copies the old bytes.
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        memory.write(&mut store, start as usize, b"abc").unwrap();
        let moved = allocate.call(&mut store, (start, 3, 1, 10)).unwrap();
        let mut copied = [0u8; 3];
        memory.read(&store, moved as usize, &mut copied).unwrap();
        assert_eq!(&copied, b"abc");
        assert!(allocate.call(&mut store, (0, 0, 1, 0x10000)).is_err(), "past the arena: a trap");
    }

    #[test]
    fn modules_without_the_go_sdk_are_refused_with_a_reason() {
        let error = add_adapter_allocator(&go_like_module(b"something-else")).unwrap_err();
        assert!(error.contains("does not use the Go SDK"), "{error}");
    }
}
