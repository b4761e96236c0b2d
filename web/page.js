// The completion page: a prompt, the sampling settings, and the model's continuation, streamed.
// index.html?prompt=TEXT&tokens=N&temperature=T&top_k=K&top_p=P&seed=S generates on load, and the
// page's state (loading, ready, running, done, error) is in <body data-state>.

import {
  applyUrlSettings, describeModel, generateTokens, letPaint, loadModel, picker, rate, readSettings, seededRandom,
  shownText,
} from "./tinyllm.js";

const $ = (id) => document.getElementById(id);

async function run(model, prompt, seed) {
  const output = $("output");
  document.body.dataset.state = "running";
  $("generate").disabled = true;
  try {
    const settings = readSettings();
    const ids = model.tokenizer.encode(prompt);
    if (!ids.length) throw new Error("the prompt is empty: give at least one character");
    const pick = picker(settings, seed === null ? Math.random : seededRandom(Number(seed)));
    const generated = [], start = performance.now();
    let shown = start;
    output.textContent = prompt;
    for await (const token of generateTokens(model.newStep(), ids, settings.tokens, model.blockSize, pick)) {
      generated.push(token);
      output.textContent = prompt + shownText(model.tokenizer, generated);
      $("stats").textContent = rate(generated.length, start);
      if (performance.now() - shown > 50) { // let the page paint now and then
        await letPaint();
        shown = performance.now();
      }
    }
    output.textContent = prompt + model.tokenizer.decode(generated);
    document.body.dataset.state = "done";
  } catch (error) {
    output.textContent = String(error.message ?? error);
    document.body.dataset.state = "error";
  } finally {
    $("generate").disabled = false;
  }
}

async function main() {
  try {
    const model = await loadModel();
    $("about").textContent = describeModel(model, "generating text");
    const params = new URLSearchParams(location.search);
    applyUrlSettings(params, { prompt: "prompt", temperature: "temperature", top_k: "top-k", top_p: "top-p", tokens: "tokens" });
    $("generate").onclick = () => run(model, $("prompt").value, params.get("seed"));
    $("generate").disabled = false;
    $("output").textContent = "";
    document.body.dataset.state = "ready";
    // The URL's prompt as it is (a textarea would turn "\r\n" into "\n").
    if (params.has("prompt")) await run(model, params.get("prompt"), params.get("seed"));
  } catch (error) {
    $("output").textContent = `could not load the model: ${error.message ?? error}`;
    document.body.dataset.state = "error";
  }
}

main();
