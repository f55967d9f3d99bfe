// Render chat templates with @huggingface/jinja, the JavaScript Jinja engine of LM Studio and
// transformers.js (edgeft/pipeline/verify/jsjinja.py runs this). stdin: {"module": path of the package's
// dist/index.js, "jobs": [{"template": "...", "context": {...}}]}; stdout: [{"text": "..."} or {"error": "..."}].
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const input = JSON.parse(readFileSync(0, "utf8"));
const { Template } = await import(pathToFileURL(input.module).href);
const compiled = new Map();
const out = input.jobs.map(({ template, context }) => {
  try {
    if (!compiled.has(template)) compiled.set(template, new Template(template));
    return { text: compiled.get(template).render(context) };
  } catch (e) {
    return { error: String(e && e.message ? e.message : e) };
  }
});
process.stdout.write(JSON.stringify(out));
