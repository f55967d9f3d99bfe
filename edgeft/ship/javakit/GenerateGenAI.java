package edgeft.kit;

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
