"""The Java consumer kit in every dist: a small program that runs the GGUF through JNA over libllama,
and one that runs the onnxruntime-genai int4 folder through JNA over the ORT GenAI C API.

Produces `dist/<name>/java/`: `src/edgeft/kit/Llama.java` (the JNA binding of the llama.cpp C
API functions it uses, with the parameter structs generated from the very llama-cpp-python that
edgeft verified with, so their layout matches that libllama), `src/edgeft/kit/Generate.java`
(load, render the chat prompt with the model's template, greedy generation, print the token ids
and the text), `build.sh` and a README.

    javac -cp /usr/share/java/jna.jar -d out src/edgeft/kit/*.java
    java -cp out:/usr/share/java/jna.jar -Djna.library.path=LIBDIR edgeft.kit.Generate MODEL.gguf "question"
"""

from __future__ import annotations

import ctypes
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from edgeft.core.manifest import Artifact

# The kit's sources, shipped as files beside this module (package data): Java as Java. Only the
# struct layouts of Llama.java (from Llama.java.template) and the READMEs' names are filled in.
JAVA_SOURCES = (
    "Generate.java",
    "OrtGenAI.java",
    "GenerateGenAI.java",
    "Registry.java",
    "ServeClient.java",
    "Tools.java",
)
TOOLS_FILE = "tools.jsonl"  # a tool-trained model's definitions, one per line as training rendered them
# The A/B routing test vectors (edgeft.registry.store), shipped with the kit so a port can be checked too.
ROUTING_VECTORS = "routing-vectors.json"

# ctypes type name → Java field type (C bool is one byte: JNA's `boolean` would be four).
_JAVA = {
    "c_int": "int",
    "c_uint": "int",
    "c_int32": "int",
    "c_uint32": "int",
    "c_bool": "byte",
    "c_float": "float",
    "c_ulong": "long",
    "c_size_t": "long",
    "c_int64": "long",
    "c_uint64": "long",
    "c_char_p": "String",
    "c_byte": "byte",
    "c_int8": "byte",
}
STRUCTS = {
    "LlamaModelParams": "llama_model_params",
    "LlamaContextParams": "llama_context_params",
    "LlamaBatch": "llama_batch",
    "LlamaSamplerChainParams": "llama_sampler_chain_params",
    "LlamaChatMessage": "llama_chat_message",
}


def _java_struct(java_name: str, c_struct: Any) -> str:
    fields = []
    for name, ctype in c_struct._fields_:
        jtype = _JAVA.get(ctype.__name__, "Pointer")  # pointers and callbacks
        fields.append((name, jtype))
    order = ", ".join(f'"{n}"' for n, _ in fields)
    body = "\n".join(f"        public {t} {n};" for n, t in fields)
    return f"""    @Structure.FieldOrder({{{order}}})
    class {java_name} extends Structure {{
{body}
        /** sizeof(struct {c_struct.__name__}) in the libllama this kit was made for. */
        public static final int C_SIZE = {ctypes.sizeof(c_struct)};
        public static class ByValue extends {java_name} implements Structure.ByValue {{}}
        public static class ByReference extends {java_name} implements Structure.ByReference {{}}
    }}
"""


def _source(name: str) -> str:
    """A file of the kit as shipped in this package (edgeft/ship/javakit/)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def binding_source() -> str:
    """Llama.java: the hand-written binding with the parameter structs generated in."""
    import llama_cpp

    structs = "\n".join(_java_struct(j, getattr(llama_cpp, c)) for j, c in STRUCTS.items())
    return Template(_source("Llama.java.template")).substitute(structs=structs, version=llama_cpp.__version__)


def readme(name: str, gguf_files: list[str]) -> str:
    return Template(_source("README.md.template")).substitute(
        name=name,
        gguf_list="\n".join(f"- `../gguf/{f}`" for f in gguf_files),
        first_gguf=gguf_files[0] if gguf_files else "<model>.gguf",
    )


def onnx_section(onnx: list[Artifact]) -> str:
    """How to feed each plain ONNX model from ONNX Runtime Java: names, types, shapes, tokenizer."""
    if not onnx:
        return ""
    out = [
        "",
        "## ONNX Runtime Java (plain ONNX + tokenizer.json)",
        "",
        "Load `model.onnx` with `OrtEnvironment.getEnvironment().createSession(path)`, tokenize with",
        "`tokenizer.json` beside it (DJL's `HuggingFaceTokenizer.newInstance(path)` reads it), render the",
        "chat template from `tokenizer_config.json` (the `chat_template` the model was trained with), and",
        "feed the first step with empty past tensors (sequence length 0); then feed each `present.*`",
        "back as `past_key_values.*`. Stop at any id in `generation_config.json`'s `eos_token_id`.",
        "",
    ]
    for a in onnx:
        out += [
            f"### `../{a.path}/model.onnx` ({a.type}, opset {a.get('opset')})",
            "",
            "| direction | name | type | shape |",
            "|---|---|---|---|",
        ]
        for direction in ("inputs", "outputs"):
            for io in a.get(direction, []):
                shape = " × ".join(str(d) for d in io["shape"])
                out.append(f"| {direction[:-1]} | `{io['name']}` | {io['type']} | {shape} |")
        out.append("")
    return "\n".join(out)


def genai_section(folders: list[str]) -> str:
    """How to run the onnxruntime-genai int4 folder from Java (GenerateGenAI over the C API)."""
    if not folders:
        return ""
    return Template(_source("README-genai.md.template")).substitute(folder=folders[0])


def write_kit(
    dest: Path,
    name: str,
    gguf_files: list[str],
    onnx: list[Artifact] | None = None,
    genai: list[str] | None = None,
    prompt_format: dict[str, str] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> None:
    """`prompt_format`: the verified plain pieces of the chat prompt (edgeft.models.prompt_format),
    written as prompt-format.properties; without it Generate uses llama.cpp's template matcher.
    `tools`: the definitions a model trained on tool rows was trained with, written as tools.jsonl
    for Tools.java (each line exactly as edgeft.data.tools rendered it)."""
    src = dest / "src" / "edgeft" / "kit"
    src.mkdir(parents=True)
    if prompt_format:
        from edgeft.models.prompt_format import to_properties

        (dest / "prompt-format.properties").write_text(
            to_properties(
                prompt_format,
                f"{name}: the chat prompt as plain pieces, derived by edgeft from the model's template\n"
                f"and checked by edgeft verify to render every probe conversation exactly as the template does.\n"
                f"prompt = start + user.prefix + message + user.suffix + generation (see Generate.java)",
            )
        )
    (src / "Llama.java").write_text(binding_source())
    for java in JAVA_SOURCES:
        (src / java).write_text(_source(java))
    (dest / ROUTING_VECTORS).write_text(_source(ROUTING_VECTORS))
    if tools:
        from edgeft.data.tools import definition_line

        (dest / TOOLS_FILE).write_text("".join(definition_line(fn) + "\n" for fn in tools), encoding="utf-8")
    (dest / "build.sh").write_text(_source("build.sh"))
    (dest / "build.sh").chmod(0o755)
    (dest / "README.md").write_text(
        readme(name, gguf_files) + onnx_section(onnx or []) + genai_section(genai or [])
    )
