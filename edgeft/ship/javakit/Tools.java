package edgeft.kit;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * edgeft's tool format (edgeft-tools/1) for an app that prompts a model trained on tool rows itself
 * (llama.cpp through JNA, ONNX Runtime): the same text the training rows were rendered into, before
 * the chat template. `edgeft serve` does this for HTTP clients; this class is for the rest.
 *
 * <ul>
 *   <li>{@link #system}: the system turn with the tool definitions. tools.jsonl beside this kit holds
 *       every definition the model was trained with, one JSON object per line exactly as training
 *       wrote it: pass the lines of the tools you offer, in that order.</li>
 *   <li>{@link #parse}: the calls in the model's answer (each `{"name", "arguments"}` between
 *       &lt;tool_call&gt; and &lt;/tool_call&gt;); {@link #content}: the answer's text around them.</li>
 *   <li>{@link #results}: the user turn that hands the results back, in the order of the calls; the
 *       assistant turn that made the calls goes back into the conversation as the model wrote it.</li>
 * </ul>
 * Then render the turns as plain messages with prompt-format.properties (see Generate.java).
 *
 * <pre>
 * java -cp out edgeft.kit.Tools tools.jsonl "You are the order assistant."   # prints the system turn
 * java -cp out edgeft.kit.Tools --parse answer.txt                              # prints each call
 * </pre>
 */
public final class Tools {
    public static final String FORMAT = "edgeft-tools/1";
    static final String HEADER = "Functions you can call, one JSON object per line:";
    static final String HOW = "To call one, answer <tool_call>\n{\"name\": <name>, \"arguments\": <object>}\n"
            + "</tool_call>, one block per call. Results come back in <tool_response>.";
    private static final Pattern CALL = Pattern.compile("<tool_call>(.*?)(?:</tool_call>|\\z)", Pattern.DOTALL);

    private Tools() {}

    /** One call: the function's name and its arguments (a JSON object, parsed). */
    public record Call(String name, Map<?, ?> arguments) {}

    /** The system turn: the app's own system text (or none), then the definitions and how to call them. */
    public static String system(String system, List<String> definitions) {
        String block = HEADER + "\n<tools>\n" + String.join("\n", definitions) + "\n</tools>\n" + HOW;
        return system == null || system.isBlank() ? block : system + "\n\n" + block;
    }

    /** The user turn that hands back the results of a turn's calls, in the order of the calls. */
    public static String results(List<String> results) {
        List<String> blocks = new ArrayList<>();
        for (String r : results) {
            blocks.add("<tool_response>\n" + r + "\n</tool_response>");
        }
        return String.join("\n", blocks);
    }

    /** The calls in an answer; a block that is not a {"name", "arguments"} object is left out. */
    public static List<Call> parse(String answer) {
        List<Call> calls = new ArrayList<>();
        Matcher m = CALL.matcher(answer);
        while (m.find()) {
            try {
                if (Registry.Json.parse(m.group(1).strip()) instanceof Map<?, ?> call
                        && call.get("name") instanceof String name) {
                    Object args = call.get("arguments");
                    calls.add(new Call(name, args instanceof Map<?, ?> a ? a : Map.of()));
                }
            } catch (IllegalArgumentException notJson) {
                // the model's broken block: not a call
            }
        }
        return calls;
    }

    /** The answer's text without its call blocks. */
    public static String content(String answer) {
        return CALL.matcher(answer).replaceAll("").strip();
    }

    public static void main(String[] args) throws Exception {
        if (args.length == 2 && args[0].equals("--parse")) {
            for (Call c : parse(Files.readString(Path.of(args[1]), StandardCharsets.UTF_8))) {
                System.out.println(c.name() + " " + c.arguments());
            }
            return;
        }
        if (args.length < 1) {
            System.err.println("usage: Tools TOOLS_JSONL [SYSTEM] | Tools --parse ANSWER_FILE");
            System.exit(2);
        }
        List<String> definitions = Files.readAllLines(Path.of(args[0]), StandardCharsets.UTF_8);
        definitions.removeIf(String::isBlank);
        System.out.print(system(args.length > 1 ? args[1] : null, definitions));
    }
}
