package edgeft.kit;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.Map;

/**
 * Calls `edgeft serve` (an OpenAI-compatible endpoint) with java.net.http.HttpClient and nothing
 * else, sending the request bodies LangChain4j's OpenAiChatModel and Spring AI's ChatClient send:
 * max_completion_tokens, response_format json_object, streaming with
 * stream_options.include_usage (the usage chunk, without choices, comes last, then [DONE]), and
 * `tools` for a model trained on tool rows (the answer's tool_calls, whole or streamed as deltas).
 *
 * <pre>
 * java -cp out edgeft.kit.ServeClient http://127.0.0.1:8080 nl2sql-tiny "How many employees work in Oslo?" [user-key [tools.json]]
 * </pre>
 * tools.json holds the request's `tools` array as OpenAI defines it (LangChain4j's ToolSpecification
 * and Spring AI's function callbacks serialise to the same).
 * Prints, for each call, the version and variant that answered (X-Edgeft-Version,
 * X-Edgeft-Variant), the text, and the token usage. $EDGEFT_API_KEY, when set, is sent as the
 * Bearer key. Exits 1 with the server's OpenAI error message on a 4xx/5xx.
 */
public final class ServeClient {
    private final HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build();
    private final String base;
    private final String apiKey;

    public ServeClient(String base, String apiKey) {
        this.base = base.replaceAll("/+$", "");
        this.apiKey = apiKey;
    }

    /** One answer and what answered it; `calls`: each tool call as "name arguments-json". */
    public record Answer(String text, String finishReason, long promptTokens, long completionTokens,
                         String version, String variant, List<String> calls) {}

    static String quote(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> {
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        return out.append('"').toString();
    }

    /** The body LangChain4j's OpenAiChatModel sends (non-null fields only). */
    static String body(String model, String system, String question, String user, int maxTokens,
                       boolean json, boolean stream, String tools) {
        StringBuilder b = new StringBuilder("{\"model\":").append(quote(model)).append(",\"messages\":[");
        if (system != null) {
            b.append("{\"role\":\"system\",\"content\":").append(quote(system)).append("},");
        }
        b.append("{\"role\":\"user\",\"content\":").append(quote(question)).append("}]");
        b.append(",\"temperature\":0.0,\"max_completion_tokens\":").append(maxTokens);
        if (user != null) {
            b.append(",\"user\":").append(quote(user));
        }
        if (json) {
            b.append(",\"response_format\":{\"type\":\"json_object\"}");
        }
        if (tools != null) {
            b.append(",\"tools\":").append(tools);
        }
        if (stream) {
            b.append(",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
        }
        return b.append('}').toString();
    }

    private HttpRequest request(String body) {
        HttpRequest.Builder r = HttpRequest.newBuilder(URI.create(base + "/v1/chat/completions"))
                .timeout(Duration.ofMinutes(5))
                .header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(body, StandardCharsets.UTF_8));
        if (apiKey != null && !apiKey.isEmpty()) {
            r.header("Authorization", "Bearer " + apiKey);
        }
        return r.build();
    }

    static IOException failure(int status, String body) {
        String message = body;
        try {
            Object parsed = Registry.Json.parse(body);
            if (parsed instanceof Map<?, ?> m && m.get("error") instanceof Map<?, ?> e) {
                message = e.get("message") + " (param " + e.get("param") + ")";
            }
        } catch (IllegalArgumentException ignored) {
            // not JSON: the body as it is
        }
        return new IOException("HTTP " + status + ": " + message);
    }

    static long number(Object o) {
        return o instanceof Number n ? n.longValue() : 0;
    }

    /** A non-streaming call, as OpenAiChatModel.chat(...) makes it. */
    public Answer call(String model, String system, String question, String user, int maxTokens, boolean json,
                       String tools) throws IOException, InterruptedException {
        HttpResponse<String> r = http.send(request(body(model, system, question, user, maxTokens, json, false, tools)),
                HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8));
        if (r.statusCode() != 200) {
            throw failure(r.statusCode(), r.body());
        }
        Map<?, ?> data = (Map<?, ?>) Registry.Json.parse(r.body());
        Map<?, ?> choice = (Map<?, ?>) ((List<?>) data.get("choices")).get(0);
        Map<?, ?> message = (Map<?, ?>) choice.get("message");
        Map<?, ?> usage = (Map<?, ?>) data.get("usage");
        List<String> calls = new java.util.ArrayList<>();
        if (message.get("tool_calls") instanceof List<?> list) {
            for (Object c : list) {
                calls.add(call((Map<?, ?>) ((Map<?, ?>) c).get("function")));
            }
        }
        Object content = message.get("content");
        return new Answer(content instanceof String t ? t : "", (String) choice.get("finish_reason"),
                number(usage.get("prompt_tokens")), number(usage.get("completion_tokens")),
                r.headers().firstValue("x-edgeft-version").orElse(""),
                r.headers().firstValue("x-edgeft-variant").orElse(""), calls);
    }

    static String call(Map<?, ?> function) {
        return function.get("name") + " " + function.get("arguments");
    }

    /** A streaming call, as Spring AI's ChatClient.stream() makes it: server-sent events read line by line. */
    public Answer stream(String model, String system, String question, String user, int maxTokens, String tools)
            throws IOException, InterruptedException {
        HttpResponse<java.io.InputStream> r = http.send(request(body(model, system, question, user, maxTokens, false, true, tools)),
                HttpResponse.BodyHandlers.ofInputStream());
        if (r.statusCode() != 200) {
            throw failure(r.statusCode(), new String(r.body().readAllBytes(), StandardCharsets.UTF_8));
        }
        StringBuilder text = new StringBuilder();
        List<String> calls = new java.util.ArrayList<>();
        String finish = null;
        long prompt = -1;
        long completion = -1;
        boolean done = false;
        try (BufferedReader in = new BufferedReader(new InputStreamReader(r.body(), StandardCharsets.UTF_8))) {
            String line;
            while ((line = in.readLine()) != null) {
                if (!line.startsWith("data: ")) {
                    continue;
                }
                String payload = line.substring(6);
                if (payload.equals("[DONE]")) {
                    done = true;
                    break;
                }
                Map<?, ?> chunk = (Map<?, ?>) Registry.Json.parse(payload);
                if (chunk.get("error") instanceof Map<?, ?> e) {
                    throw new IOException("stream error: " + e.get("message"));
                }
                if (chunk.get("usage") instanceof Map<?, ?> u) {
                    prompt = number(u.get("prompt_tokens"));
                    completion = number(u.get("completion_tokens"));
                }
                for (Object c : (List<?>) chunk.get("choices")) {
                    Map<?, ?> choice = (Map<?, ?>) c;
                    if (choice.get("delta") instanceof Map<?, ?> d && d.get("content") instanceof String s) {
                        text.append(s);
                    }
                    if (choice.get("delta") instanceof Map<?, ?> d && d.get("tool_calls") instanceof List<?> list) {
                        for (Object k : list) {  // edgeft sends each call whole, in one delta
                            calls.add(call((Map<?, ?>) ((Map<?, ?>) k).get("function")));
                        }
                    }
                    if (choice.get("finish_reason") instanceof String f) {
                        finish = f;
                    }
                }
            }
        }
        if (!done) {
            throw new IOException("the stream ended without [DONE]");
        }
        return new Answer(text.toString(), finish, prompt, completion,
                r.headers().firstValue("x-edgeft-version").orElse(""),
                r.headers().firstValue("x-edgeft-variant").orElse(""), calls);
    }

    static void print(String what, Answer a) {
        System.out.println(what + ".version: " + a.version());
        System.out.println(what + ".variant: " + a.variant());
        System.out.println(what + ".finish: " + a.finishReason());
        System.out.println(what + ".usage: " + a.promptTokens() + " " + a.completionTokens());
        System.out.println(what + ".text: " + quote(a.text()));
        System.out.println(what + ".calls: " + quote(String.join("\n", a.calls())));
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: ServeClient BASE_URL MODEL QUESTION [USER_KEY [TOOLS_JSON_FILE]]");
            System.exit(2);
        }
        ServeClient client = new ServeClient(args[0], System.getenv("EDGEFT_API_KEY"));
        String user = args.length > 3 && !args[3].isEmpty() ? args[3] : null;
        try {
            if (args.length > 4) {  // a tools request: the answer whole and streamed
                String tools = java.nio.file.Files.readString(java.nio.file.Path.of(args[4]));
                print("call", client.call(args[1], null, args[2], user, 48, false, tools));
                print("stream", client.stream(args[1], null, args[2], user, 48, tools));
                return;
            }
            print("call", client.call(args[1], null, args[2], user, 48, false, null));
            print("stream", client.stream(args[1], null, args[2], user, 48, null));
            print("json", client.call(args[1], null, args[2], user, 48, true, null));
        } catch (IOException e) {
            System.err.println("error: " + e.getMessage());
            System.exit(1);
        }
    }
}
