"""What ships: the dist (package stage), its frontier of types, the Java kit and LM Studio / Ollama files."""
