// Render LaTeX strings with KaTeX (throwOnError): reads a JSON list on stdin, writes a JSON
// list of [index, message] for the ones KaTeX refuses.  Used by tests/test_latex_render.py.
const katex = require("katex");
let input = "";
process.stdin.on("data", (d) => { input += d; });
process.stdin.on("end", () => {
  const errors = [];
  JSON.parse(input).forEach((tex, i) => {
    try {
      katex.renderToString(tex, { throwOnError: true, displayMode: true, strict: "error" });
    } catch (e) {
      errors.push([i, String(e.message)]);
    }
  });
  process.stdout.write(JSON.stringify(errors));
});
