#!/usr/bin/env sh
# Compile the kit (OpenJDK 17 and JNA: Debian's `openjdk-17-jdk-headless libjna-java`).
set -e
cd "$(dirname "$0")"
JNA=${JNA_JAR:-/usr/share/java/jna.jar}
mkdir -p out
javac -cp "$JNA" -d out src/edgeft/kit/*.java
echo "run: java -cp out:$JNA -Djna.library.path=<dir with libllama.so> edgeft.kit.Generate <model.gguf> \"question\""
