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
from pathlib import Path

# ctypes type name → Java field type (C bool is one byte: JNA's `boolean` would be four).
_JAVA = {"c_int": "int", "c_uint": "int", "c_int32": "int", "c_uint32": "int", "c_bool": "byte",
         "c_float": "float", "c_ulong": "long", "c_size_t": "long", "c_int64": "long", "c_uint64": "long",
         "c_char_p": "String", "c_byte": "byte", "c_int8": "byte"}
STRUCTS = {"LlamaModelParams": "llama_model_params", "LlamaContextParams": "llama_context_params",
           "LlamaBatch": "llama_batch", "LlamaSamplerChainParams": "llama_sampler_chain_params",
           "LlamaChatMessage": "llama_chat_message"}


def _java_struct(java_name: str, c_struct: type) -> str:
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


def binding_source() -> str:
    import llama_cpp

    structs = "\n".join(_java_struct(j, getattr(llama_cpp, c)) for j, c in STRUCTS.items())
    return f"""package edgeft.kit;

import com.sun.jna.Library;
import com.sun.jna.Native;
import com.sun.jna.Pointer;
import com.sun.jna.Structure;

/** JNA binding of the llama.cpp C API functions the kit uses (llama-cpp-python {llama_cpp.__version__}). */
public interface Llama extends Library {{
    Llama INSTANCE = Native.load("llama", Llama.class);

{structs}
    void llama_backend_init();
    void llama_backend_free();
    LlamaModelParams.ByValue llama_model_default_params();
    LlamaContextParams.ByValue llama_context_default_params();
    LlamaSamplerChainParams.ByValue llama_sampler_chain_default_params();
    Pointer llama_model_load_from_file(String path, LlamaModelParams.ByValue params);
    void llama_model_free(Pointer model);
    Pointer llama_init_from_model(Pointer model, LlamaContextParams.ByValue params);
    void llama_free(Pointer ctx);
    Pointer llama_model_get_vocab(Pointer model);
    String llama_model_chat_template(Pointer model, String name);
    int llama_chat_apply_template(String tmpl, LlamaChatMessage chat, long nMsg, byte addAssistant,
                                  byte[] buf, int length);
    int llama_tokenize(Pointer vocab, byte[] text, int textLen, int[] tokens, int nTokensMax,
                       byte addSpecial, byte parseSpecial);
    int llama_token_to_piece(Pointer vocab, int token, byte[] buf, int length, int lstrip, byte special);
    byte llama_vocab_is_eog(Pointer vocab, int token);
    LlamaBatch.ByValue llama_batch_get_one(Pointer tokens, int nTokens);
    int llama_decode(Pointer ctx, LlamaBatch.ByValue batch);
    Pointer llama_sampler_chain_init(LlamaSamplerChainParams.ByValue params);
    void llama_sampler_chain_add(Pointer chain, Pointer sampler);
    Pointer llama_sampler_init_greedy();
    int llama_sampler_sample(Pointer sampler, Pointer ctx, int idx);
    void llama_sampler_free(Pointer sampler);
}}
"""


GENERATE = r"""package edgeft.kit;

import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import java.io.ByteArrayOutputStream;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

/**
 * Greedy generation with a GGUF model through libllama:
 *   java edgeft.kit.Generate MODEL.gguf "user message" [MAX_TOKENS]
 * Prints the prompt's token ids, the generated token ids, and the text.
 */
public final class Generate {
    private static void check(boolean ok, String what) {
        if (!ok) { System.err.println("error: " + what); System.exit(1); }
    }

    private static Pointer tokens(int[] ids, int n) {
        Memory m = new Memory(4L * Math.max(n, 1));
        m.write(0, ids, 0, n);
        return m;
    }

    /** -Dedgeft.promptFormat=FILE, else prompt-format.properties in the kit's folder (beside out/). */
    private static Properties promptFormat() {
        try {
            Path file;
            String given = System.getProperty("edgeft.promptFormat");
            if (given != null) {
                file = Paths.get(given);
            } else {
                Path classes = Paths.get(Generate.class.getProtectionDomain().getCodeSource().getLocation().toURI());
                file = classes.getParent().resolve("prompt-format.properties");
            }
            if (!Files.isRegularFile(file)) return null;
            Properties p = new Properties();
            try (Reader r = Files.newBufferedReader(file, StandardCharsets.ISO_8859_1)) { p.load(r); }
            return p;
        } catch (Exception e) {
            throw new IllegalStateException("cannot read the prompt format: " + e, e);
        }
    }

    public static void main(String[] args) {
        check(args.length >= 2, "usage: Generate MODEL.gguf \"user message\" [MAX_TOKENS]");
        int maxTokens = args.length > 2 ? Integer.parseInt(args[2]) : 64;
        Llama L = Llama.INSTANCE;
        check(new Llama.LlamaModelParams().size() == Llama.LlamaModelParams.C_SIZE
              && new Llama.LlamaContextParams().size() == Llama.LlamaContextParams.C_SIZE
              && new Llama.LlamaBatch().size() == Llama.LlamaBatch.C_SIZE,
              "struct sizes differ from the libllama this kit was generated for");
        L.llama_backend_init();
        Llama.LlamaModelParams.ByValue mp = L.llama_model_default_params();
        // Weight repacking (AMX) crashes on some CPUs with small models (llama.cpp issue 20824).
        mp.use_extra_bufts = 0;
        Pointer model = L.llama_model_load_from_file(args[0], mp);
        check(model != null, "cannot load " + args[0]);
        Pointer vocab = L.llama_model_get_vocab(model);
        Llama.LlamaContextParams.ByValue cp = L.llama_context_default_params();
        cp.n_ctx = 2048;
        cp.n_batch = 2048;
        cp.no_perf = 1;
        Pointer ctx = L.llama_init_from_model(model, cp);
        check(ctx != null, "cannot create a context");

        // The chat prompt: the pieces edgeft derived from the model's own template and verified
        // against it (prompt-format.properties); llama.cpp's built-in matcher only without them
        // (it is not a Jinja engine: it drops default system prompts, and knows only some formats).
        Properties fmt = promptFormat();
        byte[] prompt;
        byte addSpecial;
        if (fmt != null) {
            String content = "true".equals(fmt.getProperty("trim")) ? args[1].strip() : args[1];
            prompt = (fmt.getProperty("start") + fmt.getProperty("user.prefix") + content
                      + fmt.getProperty("user.suffix") + fmt.getProperty("generation")).getBytes(StandardCharsets.UTF_8);
            addSpecial = 0;  // the pieces hold BOS where the template writes it
        } else {
            System.err.println("note: no prompt-format.properties; using llama.cpp's built-in template matcher");
            String template = L.llama_model_chat_template(model, null);
            check(template != null, "the GGUF has no chat template");
            Llama.LlamaChatMessage msg = new Llama.LlamaChatMessage();
            msg.role = "user";
            msg.content = args[1];
            byte[] buf = new byte[1 << 16];
            int n = L.llama_chat_apply_template(template, msg, 1, (byte) 1, buf, buf.length);
            check(n > 0 && n <= buf.length, "llama.cpp does not know this chat template");
            prompt = java.util.Arrays.copyOf(buf, n);
            addSpecial = 1;
        }

        int[] ids = new int[8192];
        int nIds = L.llama_tokenize(vocab, prompt, prompt.length, ids, ids.length, addSpecial, (byte) 1);
        check(nIds > 0, "tokenization failed");
        Pointer sampler = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params());
        L.llama_sampler_chain_add(sampler, L.llama_sampler_init_greedy());

        check(L.llama_decode(ctx, L.llama_batch_get_one(tokens(ids, nIds), nIds)) == 0, "decode failed");
        List<Integer> out = new ArrayList<>();
        ByteArrayOutputStream text = new ByteArrayOutputStream();
        byte[] piece = new byte[256];
        while (out.size() < maxTokens) {
            int tok = L.llama_sampler_sample(sampler, ctx, -1);
            if (L.llama_vocab_is_eog(vocab, tok) != 0) break;
            out.add(tok);
            int len = L.llama_token_to_piece(vocab, tok, piece, piece.length, 0, (byte) 0);
            if (len > 0) text.write(piece, 0, len);
            check(L.llama_decode(ctx, L.llama_batch_get_one(tokens(new int[] {tok}, 1), 1)) == 0, "decode failed");
        }
        StringBuilder promptIds = new StringBuilder();
        for (int i = 0; i < nIds; i++) promptIds.append(i == 0 ? "" : " ").append(ids[i]);
        StringBuilder outIds = new StringBuilder();
        for (int i = 0; i < out.size(); i++) outIds.append(i == 0 ? "" : " ").append(out.get(i));
        System.out.println("prompt_tokens: " + promptIds);
        System.out.println("tokens: " + outIds);
        System.out.println("text: " + new String(text.toByteArray(), StandardCharsets.UTF_8));
        L.llama_sampler_free(sampler);
        L.llama_free(ctx);
        L.llama_model_free(model);
        L.llama_backend_free();
    }
}
"""

GENAI_BINDING = """package edgeft.kit;

import com.sun.jna.Library;
import com.sun.jna.Native;
import com.sun.jna.Pointer;
import com.sun.jna.ptr.LongByReference;
import com.sun.jna.ptr.PointerByReference;

/**
 * JNA binding of the ONNX Runtime GenAI C API functions the kit uses (ort_genai_c.h). Every
 * OgaResult* return is null on success; otherwise OgaResultGetError says why.
 */
public interface OrtGenAI extends Library {
    OrtGenAI INSTANCE = Native.load("onnxruntime-genai", OrtGenAI.class);

    String OgaResultGetError(Pointer result);
    void OgaDestroyResult(Pointer result);
    void OgaDestroyString(Pointer string);
    void OgaShutdown();
    Pointer OgaCreateModel(String configPath, PointerByReference out);
    void OgaDestroyModel(Pointer model);
    Pointer OgaCreateTokenizer(Pointer model, PointerByReference out);
    void OgaDestroyTokenizer(Pointer tokenizer);
    Pointer OgaTokenizerApplyChatTemplate(Pointer tokenizer, String templateStr, String messages, String tools,
                                          byte addGenerationPrompt, PointerByReference out);
    Pointer OgaTokenizerEncode(Pointer tokenizer, String text, Pointer sequences);
    Pointer OgaTokenizerDecode(Pointer tokenizer, int[] tokens, long count, PointerByReference out);
    Pointer OgaCreateSequences(PointerByReference out);
    void OgaDestroySequences(Pointer sequences);
    long OgaSequencesGetSequenceCount(Pointer sequences, long index);
    Pointer OgaSequencesGetSequenceData(Pointer sequences, long index);
    Pointer OgaCreateGeneratorParams(Pointer model, PointerByReference out);
    void OgaDestroyGeneratorParams(Pointer params);
    Pointer OgaGeneratorParamsSetSearchNumber(Pointer params, String name, double value);
    Pointer OgaCreateGenerator(Pointer model, Pointer params, PointerByReference out);
    void OgaDestroyGenerator(Pointer generator);
    Pointer OgaGenerator_AppendTokenSequences(Pointer generator, Pointer sequences);
    byte OgaGenerator_IsDone(Pointer generator);
    Pointer OgaGenerator_GenerateNextToken(Pointer generator);
    Pointer OgaGenerator_GetNextTokens(Pointer generator, PointerByReference out, LongByReference count);
}
"""

GENERATE_GENAI = r"""package edgeft.kit;

import com.sun.jna.Pointer;
import com.sun.jna.ptr.LongByReference;
import com.sun.jna.ptr.PointerByReference;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Greedy generation with the dist's onnxruntime-genai int4 folder through the ORT GenAI C API:
 *   ORT_LIB_PATH=/path/to/libonnxruntime.so.1.x java edgeft.kit.GenerateGenAI FOLDER "user message" [MAX_TOKENS]
 * Prints the prompt's token ids, the generated token ids, and the text.
 */
public final class GenerateGenAI {
    private static final OrtGenAI G = OrtGenAI.INSTANCE;

    private static void ok(Pointer result, String what) {
        if (result != null) {
            System.err.println("error: " + what + ": " + G.OgaResultGetError(result));
            G.OgaDestroyResult(result);
            System.exit(1);
        }
    }

    private static String json(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (c < 0x20) b.append(String.format("\\u%04x", (int) c)); else b.append(c);
            }
        }
        return b.append('"').toString();
    }

    /** The stop ids: genai_config.json's model.eos_token_id (a number or a list). */
    private static Set<Integer> eos(String folder) throws Exception {
        String config = Files.readString(Path.of(folder, "genai_config.json"));
        Matcher m = Pattern.compile("\"eos_token_id\"\\s*:\\s*(\\[[^\\]]*\\]|-?\\d+)").matcher(config);
        Set<Integer> ids = new HashSet<>();
        if (m.find()) {
            for (String v : m.group(1).replaceAll("[\\[\\]\\s]", "").split(",")) {
                if (!v.isEmpty()) ids.add(Integer.parseInt(v));
            }
        }
        return ids;
    }

    private static String join(List<Integer> ids) {
        StringBuilder b = new StringBuilder();
        for (int i = 0; i < ids.size(); i++) b.append(i == 0 ? "" : " ").append(ids.get(i));
        return b.toString();
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: GenerateGenAI FOLDER \"user message\" [MAX_TOKENS]");
            System.exit(1);
        }
        int maxTokens = args.length > 2 ? Integer.parseInt(args[2]) : 64;
        Set<Integer> stops = eos(args[0]);
        PointerByReference ref = new PointerByReference();
        ok(G.OgaCreateModel(args[0], ref), "cannot load " + args[0]);
        Pointer model = ref.getValue();
        ok(G.OgaCreateTokenizer(model, ref), "cannot create the tokenizer");
        Pointer tokenizer = ref.getValue();

        // The chat prompt, from the template in the folder's tokenizer_config.json.
        String messages = "[{\"role\": \"user\", \"content\": " + json(args[1]) + "}]";
        ok(G.OgaTokenizerApplyChatTemplate(tokenizer, null, messages, null, (byte) 1, ref), "chat template");
        Pointer rendered = ref.getValue();
        String prompt = rendered.getString(0, "UTF-8");
        G.OgaDestroyString(rendered);

        ok(G.OgaCreateSequences(ref), "sequences");
        Pointer sequences = ref.getValue();
        ok(G.OgaTokenizerEncode(tokenizer, prompt, sequences), "tokenization");
        int nIds = (int) G.OgaSequencesGetSequenceCount(sequences, 0);
        int[] promptIds = G.OgaSequencesGetSequenceData(sequences, 0).getIntArray(0, nIds);

        ok(G.OgaCreateGeneratorParams(model, ref), "generator params");
        Pointer params = ref.getValue();
        ok(G.OgaGeneratorParamsSetSearchNumber(params, "max_length", nIds + maxTokens), "max_length");
        ok(G.OgaCreateGenerator(model, params, ref), "generator");
        Pointer generator = ref.getValue();
        ok(G.OgaGenerator_AppendTokenSequences(generator, sequences), "prompt");

        List<Integer> out = new ArrayList<>();
        LongByReference count = new LongByReference();
        while (G.OgaGenerator_IsDone(generator) == 0 && out.size() < maxTokens) {
            ok(G.OgaGenerator_GenerateNextToken(generator), "generation");
            ok(G.OgaGenerator_GetNextTokens(generator, ref, count), "next token");
            int tok = ref.getValue().getInt(0);
            if (stops.contains(tok)) break;
            out.add(tok);
        }
        int[] outIds = out.stream().mapToInt(Integer::intValue).toArray();
        ok(G.OgaTokenizerDecode(tokenizer, outIds, outIds.length, ref), "decoding");
        Pointer decoded = ref.getValue();
        String text = decoded.getString(0, "UTF-8");
        G.OgaDestroyString(decoded);

        List<Integer> ids = new ArrayList<>();
        for (int id : promptIds) ids.add(id);
        System.out.println("prompt_tokens: " + join(ids));
        System.out.println("tokens: " + join(out));
        System.out.println("text: " + text);
        G.OgaDestroyGenerator(generator);
        G.OgaDestroyGeneratorParams(params);
        G.OgaDestroySequences(sequences);
        G.OgaDestroyTokenizer(tokenizer);
        G.OgaDestroyModel(model);
        G.OgaShutdown();
    }
}
"""

BUILD = """#!/usr/bin/env sh
# Compile the kit (OpenJDK 17 and JNA: Debian's `openjdk-17-jdk-headless libjna-java`).
set -e
cd "$(dirname "$0")"
JNA=${JNA_JAR:-/usr/share/java/jna.jar}
mkdir -p out
javac -cp "$JNA" -d out src/edgeft/kit/*.java
echo "run: java -cp out:$JNA -Djna.library.path=<dir with libllama.so> edgeft.kit.Generate <model.gguf> \\"question\\""
"""


def readme(name: str, gguf_files: list[str]) -> str:
    files = "\n".join(f"- `../gguf/{f}`" for f in gguf_files)
    return f"""# {name}: Java kit (GGUF through JNA over libllama)

A minimal Java program that loads a GGUF of this dist with llama.cpp's C API, renders the chat
prompt from `prompt-format.properties` (the model's own template as plain pieces, which `edgeft
verify` checked against the template on every probe; llama.cpp's built-in template matcher drops
default system prompts and knows only some formats), and generates greedily until the end of turn.
edgeft's tests compile and run it and check that its tokens equal llama.cpp's Python bindings'.

Requirements: OpenJDK 17+, JNA 5 (`apt install openjdk-17-jdk-headless libjna-java`), and a
`libllama.so` built from the same llama.cpp version as the one this kit was generated for (the
one in llama-cpp-python's `lib/` directory works). The struct layouts in `Llama.java` are
generated from that version; the program refuses to run if the library's differ.

```sh
./build.sh
java -cp out:/usr/share/java/jna.jar -Djna.library.path=/path/to/llama_cpp/lib \\
     edgeft.kit.Generate ../gguf/{gguf_files[0] if gguf_files else "<model>.gguf"} "your question" 128
```

GGUF files in this dist:
{files}

It prints `prompt_tokens:`, `tokens:` (the generated ids) and `text:`. Use it as the starting
point for your own service: the calls are the ones a production binding makes.
"""


def onnx_section(onnx: list[dict]) -> str:
    """How to feed each plain ONNX model from ONNX Runtime Java: names, types, shapes, tokenizer."""
    if not onnx:
        return ""
    out = ["", "## ONNX Runtime Java (plain ONNX + tokenizer.json)", "",
           "Load `model.onnx` with `OrtEnvironment.getEnvironment().createSession(path)`, tokenize with",
           "`tokenizer.json` beside it (DJL's `HuggingFaceTokenizer.newInstance(path)` reads it), render the",
           "chat template from `tokenizer_config.json` (the `chat_template` the model was trained with), and",
           "feed the first step with empty past tensors (sequence length 0); then feed each `present.*`",
           "back as `past_key_values.*`. Stop at any id in `generation_config.json`'s `eos_token_id`.", ""]
    for a in onnx:
        out += [f"### `../{a['path']}/model.onnx` ({a['type']}, opset {a.get('opset')})", "",
                "| direction | name | type | shape |", "|---|---|---|---|"]
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
    return f"""
## ONNX Runtime GenAI (the int4 folder)

`GenerateGenAI.java` runs `../{folders[0]}` through the ONNX Runtime GenAI C API (`OrtGenAI.java`,
JNA over `libonnxruntime-genai.so`): model and tokenizer from the folder, the chat template from
its `tokenizer_config.json`, greedy search, stop at `genai_config.json`'s `eos_token_id`. edgeft's
tests compile and run it and check that its tokens equal onnxruntime-genai's Python API's.
`ORT_LIB_PATH` names the ONNX Runtime library GenAI loads (both come with the Python packages
`onnxruntime-genai` and `onnxruntime`, in `onnxruntime_genai/` and `onnxruntime/capi/`).

```sh
./build.sh
ORT_LIB_PATH=/path/to/onnxruntime/capi/libonnxruntime.so.1.31.1 \\
java -cp out:/usr/share/java/jna.jar -Djna.library.path=/path/to/onnxruntime_genai \\
     edgeft.kit.GenerateGenAI ../{folders[0]} "your question" 128
```

The official ORT GenAI Java API (`ai.onnxruntime.genai`, Maven Central `com.microsoft.onnxruntime:
onnxruntime-genai`) wraps the same C functions: `new Model(folder)`, `new Tokenizer(model)`,
`GeneratorParams.setSearchOption("max_length", n)`, `Generator.appendTokenSequences`,
`generateNextToken`. This kit uses the C API directly because the jar is not available where
edgeft is built and tested.
"""


def write_kit(dest: Path, name: str, gguf_files: list[str], onnx: list[dict] | None = None,
              genai: list[str] | None = None, prompt_format: dict[str, str] | None = None) -> None:
    """`prompt_format`: the verified plain pieces of the chat prompt (edgeft.prompt_format),
    written as prompt-format.properties; without it Generate uses llama.cpp's template matcher."""
    src = dest / "src" / "edgeft" / "kit"
    src.mkdir(parents=True)
    if prompt_format:
        from edgeft.prompt_format import to_properties

        (dest / "prompt-format.properties").write_text(to_properties(
            prompt_format, f"{name}: the chat prompt as plain pieces, derived by edgeft from the model's template\n"
            f"and checked by edgeft verify to render every probe conversation exactly as the template does.\n"
            f"prompt = start + user.prefix + message + user.suffix + generation (see Generate.java)"))
    (src / "Llama.java").write_text(binding_source())
    (src / "Generate.java").write_text(GENERATE)
    (src / "OrtGenAI.java").write_text(GENAI_BINDING)
    (src / "GenerateGenAI.java").write_text(GENERATE_GENAI)
    (dest / "build.sh").write_text(BUILD)
    (dest / "build.sh").chmod(0o755)
    (dest / "README.md").write_text(readme(name, gguf_files) + onnx_section(onnx or []) + genai_section(genai or []))
