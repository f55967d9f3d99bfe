package edgeft.kit;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

/**
 * Reads an edgeft model registry (a directory with index.json) and picks what a request should
 * load: the production version, or the A/B assignment of the request key when a split is set.
 * The routing is edgeft's (edgeft/registry/store.py), proven equal on routing-vectors.json:
 * bucket = first 8 bytes of SHA-256(UTF-8(splitId + ":" + key)), big-endian unsigned, modulo 10000;
 * the first arm whose cumulative weight exceeds the bucket serves the request.
 *
 * <pre>
 * Path gguf = Registry.artifact(Path.of("registry"), "nl2sql", requestId, "gguf-q4_k_m");
 * </pre>
 * The file's sha256 is checked against the index before it is returned (once per file and
 * process; a file changed on disk afterwards is checked again). No dependencies: the index is
 * read with the small JSON reader below.
 */
public final class Registry {
    public static final int BUCKETS = 10000;

    private Registry() {}

    /** The version serving a request: its number, the arm's label, and the bucket (-1 without a split). */
    public record Selection(long version, String label, int bucket, String splitId) {}

    public static int bucket(String splitId, String key) {
        byte[] digest = sha256().digest((splitId + ":" + key).getBytes(StandardCharsets.UTF_8));
        long value = 0;
        for (int i = 0; i < 8; i++) {
            value = (value << 8) | (digest[i] & 0xffL);
        }
        return (int) Long.remainderUnsigned(value, BUCKETS);
    }

    /** The arm (a JSON object with "version", "label", "weight") that serves bucket {@code b}. */
    @SuppressWarnings("unchecked")
    public static Map<String, Object> assign(List<Object> arms, int b) {
        long total = 0;
        for (Object o : arms) {
            Map<String, Object> arm = (Map<String, Object>) o;
            total += ((Number) arm.get("weight")).longValue();
            if (b < total) {
                return arm;
            }
        }
        throw new IllegalStateException("split weights sum to " + total + ", not " + BUCKETS);
    }

    @SuppressWarnings("unchecked")
    public static Map<String, Object> index(Path registry) throws IOException {
        return (Map<String, Object>) Json.parse(Files.readString(registry.resolve("index.json")));
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> model(Map<String, Object> index, String name) {
        Map<String, Object> models = (Map<String, Object>) index.get("models");
        Object model = models.get(name);
        if (model == null) {
            throw new IllegalArgumentException("no model '" + name + "' in the registry (models: " + models.keySet() + ")");
        }
        return (Map<String, Object>) model;
    }

    @SuppressWarnings("unchecked")
    public static Selection select(Map<String, Object> index, String name, String key) {
        Map<String, Object> model = model(index, name);
        Map<String, Object> split = (Map<String, Object>) model.get("split");
        if (split != null) {
            String id = (String) split.get("id");
            int b = bucket(id, key);
            Map<String, Object> arm = assign((List<Object>) split.get("arms"), b);
            return new Selection(((Number) arm.get("version")).longValue(), (String) arm.get("label"), b, id);
        }
        Object production = ((Map<String, Object>) model.get("aliases")).get("production");
        if (production == null) {
            throw new IllegalStateException(name + " has no production version and no split");
        }
        return new Selection(((Number) production).longValue(), "production", -1, null);
    }

    /** The path of artifact {@code artifactName} (e.g. "gguf-q4_k_m") of the version serving {@code key}, checked. */
    public static Path artifact(Path registry, String name, String key, String artifactName) throws IOException {
        Map<String, Object> index = index(registry);
        return artifact(registry, index, name, select(index, name, key).version(), artifactName);
    }

    @SuppressWarnings("unchecked")
    public static Path artifact(Path registry, Map<String, Object> index, String name, long version,
                                String artifactName) throws IOException {
        Map<String, Object> versions = (Map<String, Object>) model(index, name).get("versions");
        Map<String, Object> entry = (Map<String, Object>) versions.get(Long.toString(version));
        if (entry == null) {
            throw new IllegalArgumentException(name + " has no version " + version);
        }
        Path root = registry.resolve((String) entry.get("path")).normalize();
        List<String> names = new ArrayList<>();
        for (Object o : (List<Object>) entry.get("artifacts")) {
            Map<String, Object> art = (Map<String, Object>) o;
            names.add((String) art.get("name"));
            if (!artifactName.equals(art.get("name"))) {
                continue;
            }
            Path path = inside(root, (String) art.get("path"));
            if (art.get("sha256") != null) {
                check(path, (String) art.get("sha256"));
            } else {
                for (Object f : (List<Object>) art.get("files")) {
                    Map<String, Object> file = (Map<String, Object>) f;
                    check(inside(path, (String) file.get("path")), (String) file.get("sha256"));
                }
            }
            return path;
        }
        throw new IllegalArgumentException(name + ":" + version + " has no artifact '" + artifactName + "' (" + names + ")");
    }

    private static Path inside(Path root, String relative) {
        Path p = root.resolve(relative).normalize();
        if (!p.startsWith(root)) {
            throw new SecurityException(relative + " points outside " + root);
        }
        return p;
    }

    private static final Map<Path, String> CHECKED = new ConcurrentHashMap<>();

    private static void check(Path file, String want) throws IOException {
        String stamp = Files.size(file) + "@" + Files.getLastModifiedTime(file).toMillis() + "=" + want;
        if (stamp.equals(CHECKED.get(file))) {
            return;
        }
        MessageDigest md = sha256();
        try (InputStream in = Files.newInputStream(file)) {
            byte[] buffer = new byte[1 << 20];
            for (int n; (n = in.read(buffer)) > 0; ) {
                md.update(buffer, 0, n);
            }
        }
        StringBuilder hex = new StringBuilder();
        for (byte x : md.digest()) {
            hex.append(String.format("%02x", x));
        }
        if (!hex.toString().equals(want)) {
            throw new SecurityException(file + ": sha256 " + hex + " is not the registered " + want);
        }
        CHECKED.put(file, stamp);
    }

    private static MessageDigest sha256() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    /**
     * java edgeft.kit.Registry REGISTRY MODEL KEY [ARTIFACT]   which version serves KEY (and the checked path)
     * java edgeft.kit.Registry --vectors routing-vectors.json  check this implementation against edgeft's vectors
     * java edgeft.kit.Registry --route REGISTRY MODEL          route every key read from stdin, one per line
     */
    @SuppressWarnings("unchecked")
    public static void main(String[] args) throws IOException {
        if (args.length == 2 && args[0].equals("--vectors")) {
            Map<String, Object> v = (Map<String, Object>) Json.parse(Files.readString(Path.of(args[1])));
            int ok = 0;
            int bad = 0;
            for (Object o : (List<Object>) v.get("bucket")) {
                Map<String, Object> t = (Map<String, Object>) o;
                int got = bucket((String) t.get("split_id"), (String) t.get("key"));
                if (got == ((Number) t.get("bucket")).intValue()) {
                    ok++;
                } else {
                    bad++;
                    System.out.println("mismatch: bucket(" + t.get("split_id") + ", " + t.get("key") + ") = " + got);
                }
            }
            for (Object s : (List<Object>) v.get("splits")) {
                Map<String, Object> split = (Map<String, Object>) s;
                for (Object r : (List<Object>) split.get("routes")) {
                    Map<String, Object> route = (Map<String, Object>) r;
                    Map<String, Object> arm = assign((List<Object>) split.get("arms"),
                            bucket((String) split.get("id"), (String) route.get("key")));
                    if (((Number) arm.get("version")).longValue() == ((Number) route.get("version")).longValue()) {
                        ok++;
                    } else {
                        bad++;
                        System.out.println("mismatch: " + split.get("id") + " routes " + route.get("key") + " to " + arm.get("version"));
                    }
                }
            }
            System.out.println("vectors: " + ok + " ok, " + bad + " mismatched");
            System.exit(bad == 0 ? 0 : 1);
        }
        if (args.length == 3 && args[0].equals("--route")) {
            Map<String, Object> index = index(Path.of(args[1]));
            String line;
            java.io.BufferedReader in = new java.io.BufferedReader(new java.io.InputStreamReader(System.in, StandardCharsets.UTF_8));
            StringBuilder out = new StringBuilder();
            while ((line = in.readLine()) != null) {
                out.append(line).append('\t').append(select(index, args[2], line).version()).append('\n');
            }
            System.out.print(out);
            return;
        }
        if (args.length < 3) {
            System.err.println("usage: Registry REGISTRY MODEL KEY [ARTIFACT] | --vectors FILE | --route REGISTRY MODEL");
            System.exit(2);
        }
        Path registry = Path.of(args[0]);
        Map<String, Object> index = index(registry);
        Selection s = select(index, args[1], args[2]);
        System.out.println("version: " + s.version());
        System.out.println("label: " + s.label());
        System.out.println("bucket: " + s.bucket());
        if (args.length > 3) {
            System.out.println("path: " + artifact(registry, index, args[1], s.version(), args[3]));
        }
    }

    /** A small JSON reader (objects, arrays, strings, numbers, true/false/null): enough for index.json. */
    static final class Json {
        private final String s;
        private int i;

        private Json(String s) {
            this.s = s;
        }

        static Object parse(String text) {
            Json p = new Json(text);
            Object value = p.value();
            p.space();
            if (p.i != p.s.length()) {
                throw p.error("trailing characters");
            }
            return value;
        }

        private IllegalArgumentException error(String what) {
            return new IllegalArgumentException("index.json: " + what + " at character " + i);
        }

        private void space() {
            while (i < s.length() && Character.isWhitespace(s.charAt(i))) {
                i++;
            }
        }

        private Object value() {
            space();
            if (i >= s.length()) {
                throw error("unexpected end");
            }
            char c = s.charAt(i);
            if (c == '{') {
                Map<String, Object> map = new LinkedHashMap<>();
                i++;
                space();
                if (s.charAt(i) == '}') {
                    i++;
                    return map;
                }
                while (true) {
                    space();
                    String key = string();
                    space();
                    expect(':');
                    map.put(key, value());
                    space();
                    if (s.charAt(i) == ',') {
                        i++;
                    } else {
                        expect('}');
                        return map;
                    }
                }
            }
            if (c == '[') {
                List<Object> list = new ArrayList<>();
                i++;
                space();
                if (s.charAt(i) == ']') {
                    i++;
                    return list;
                }
                while (true) {
                    list.add(value());
                    space();
                    if (s.charAt(i) == ',') {
                        i++;
                    } else {
                        expect(']');
                        return list;
                    }
                }
            }
            if (c == '"') {
                return string();
            }
            for (String word : new String[] {"true", "false", "null"}) {
                if (s.startsWith(word, i)) {
                    i += word.length();
                    return word.equals("null") ? null : Boolean.valueOf(word);
                }
            }
            int start = i;
            while (i < s.length() && "+-0123456789.eE".indexOf(s.charAt(i)) >= 0) {
                i++;
            }
            String number = s.substring(start, i);
            if (number.isEmpty()) {
                throw error("unexpected '" + c + "'");
            }
            return number.matches("-?\\d+") ? (Object) Long.parseLong(number) : (Object) Double.parseDouble(number);
        }

        private void expect(char c) {
            if (i >= s.length() || s.charAt(i) != c) {
                throw error("expected '" + c + "'");
            }
            i++;
        }

        private String string() {
            expect('"');
            StringBuilder out = new StringBuilder();
            while (true) {
                if (i >= s.length()) {
                    throw error("unterminated string");
                }
                char c = s.charAt(i++);
                if (c == '"') {
                    return out.toString();
                }
                if (c != '\\') {
                    out.append(c);
                    continue;
                }
                char e = s.charAt(i++);
                switch (e) {
                    case 'n' -> out.append('\n');
                    case 't' -> out.append('\t');
                    case 'r' -> out.append('\r');
                    case 'b' -> out.append('\b');
                    case 'f' -> out.append('\f');
                    case 'u' -> {
                        out.append((char) Integer.parseInt(s.substring(i, i + 4), 16));
                        i += 4;
                    }
                    default -> out.append(e);
                }
            }
        }
    }
}
