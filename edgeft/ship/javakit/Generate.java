package edgeft.kit;

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
