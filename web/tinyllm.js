// tinyllm in the browser. The model (model.onnx: new token ids and the KV cache -> logits and the new
// cache) runs in onnxruntime-web; the tokenizer and the sampling loop are tinyllm.py's, written again
// in JavaScript. model.json holds the config and the tokenizer. index.html?prompt=TEXT&tokens=N&temperature=T&top_k=K&seed=S generates
// on load, and the page's state (loading, ready, running, done, error) is in <body data-state>.

const ORT_VERSION = "1.30.0"; // onnxruntime-web, as pinned in package.json
const CDN = `https://cdn.jsdelivr.net/npm/onnxruntime-web@${ORT_VERSION}/dist/`;

// ---- Tokenizers: tinyllm.py's CharTokenizer and BPETokenizer -----------------------------------

export class CharTokenizer {
  constructor({ chars }) {
    this.chars = [...chars]; // by code point, as Python counts characters
    this.ids = new Map(this.chars.map((c, i) => [c, i]));
  }

  encode(text) {
    const unknown = [...new Set([...text].filter((c) => !this.ids.has(c)))];
    if (unknown.length) {
      throw new Error(`character(s) ${JSON.stringify(unknown.join(""))} not in this model's vocabulary: ` +
        "use only characters of its training text");
    }
    return [...text].map((c) => this.ids.get(c));
  }

  decode(ids) {
    return ids.map((i) => this.chars[i]).join("");
  }
}

export class BPETokenizer {
  // Byte-level BPE: ids 0-255 are the UTF-8 bytes, merge i makes id 256 + i, special tokens come last.
  // splitPattern is tinyllm.py's split pattern translated for JavaScript (js_split_pattern).
  constructor({ merges, special_tokens }, splitPattern) {
    this.merges = merges;
    this.rank = new Map(merges.map(([a, b], i) => [`${a} ${b}`, i]));
    this.bytes = Array.from({ length: 256 }, (_, b) => [b]);
    for (const [a, b] of merges) this.bytes.push([...this.bytes[a], ...this.bytes[b]]);
    this.special = new Map(Object.entries(special_tokens)); // text -> id
    for (const [text, id] of this.special) this.bytes[id] = [...new TextEncoder().encode(text)];
    this.split = new RegExp(splitPattern, "gu");
    const longestFirst = [...this.special.keys()].sort((a, b) => [...b].length - [...a].length);
    this.specialSplit = longestFirst.length ? new RegExp(`(${longestFirst.map(escapeRegExp).join("|")})`, "u") : null;
    this.cache = new Map();
  }

  encodeChunk(chunk) {
    // Apply the merges to one chunk, always the one learned first (lowest rank) next.
    if (this.cache.has(chunk)) return this.cache.get(chunk);
    let ids = [...new TextEncoder().encode(chunk)];
    while (ids.length >= 2) {
      let best = Infinity;
      for (let i = 0; i + 1 < ids.length; i++) best = Math.min(best, this.rank.get(`${ids[i]} ${ids[i + 1]}`) ?? Infinity);
      if (best === Infinity) break; // nothing left to merge
      const [a, b] = this.merges[best];
      const merged = [];
      for (let i = 0; i < ids.length; i++) {
        if (ids[i] === a && ids[i + 1] === b) merged.push(256 + best), i++;
        else merged.push(ids[i]);
      }
      ids = merged;
    }
    this.cache.set(chunk, ids);
    return ids;
  }

  encode(text) {
    // Special tokens are cut out first; the rest is split into chunks, and merges never cross chunks.
    const ids = [];
    for (const part of this.specialSplit ? text.split(this.specialSplit) : [text]) {
      if (this.special.has(part)) ids.push(this.special.get(part));
      else for (const [chunk] of part.matchAll(this.split)) ids.push(...this.encodeChunk(chunk));
    }
    return ids;
  }

  decode(ids) {
    // Invalid UTF-8 becomes U+FFFD, as Python's errors="replace"; ignoreBOM keeps a leading U+FEFF, as Python does.
    const bytes = Uint8Array.from(ids.flatMap((i) => this.bytes[i]));
    return new TextDecoder("utf-8", { ignoreBOM: true }).decode(bytes);
  }
}

function escapeRegExp(text) {
  return text.replace(/[\\^$.*+?()[\]{}|/]/g, "\\$&");
}

export function makeTokenizer(info) {
  const t = info.tokenizer;
  if (t?.type === "char") return new CharTokenizer(t);
  if (t?.type === "bpe") return new BPETokenizer(t, info.split_pattern_js);
  throw new Error("model.json holds no tokenizer: export a checkpoint from tinyllm.py train");
}

// ---- Sampling: tinyllm.py's sample_token and generate -----------------------------------------

export function sampleToken(logits, temperature, topK, random) {
  // temperature 0 is greedy (the first of equal maxima, as torch.argmax); otherwise sample from
  // softmax(logits / temperature), over the top_k most likely tokens if topK > 0.
  if (temperature === 0) return logits.reduce((best, x, i) => (x > logits[best] ? i : best), 0);
  const scaled = Array.from(logits, (x) => x / temperature);
  const kth = topK > 0 ? [...scaled].sort((a, b) => b - a)[Math.min(topK, scaled.length) - 1] : -Infinity;
  const max = scaled.reduce((a, b) => Math.max(a, b));
  const weights = scaled.map((x) => (x < kth ? 0 : Math.exp(x - max)));
  let r = random() * weights.reduce((a, b) => a + b);
  for (let i = 0; i < weights.length; i++) if ((r -= weights[i]) < 0) return i;
  return weights.findLastIndex((w) => w > 0); // rounding left r just above zero
}

export function seededRandom(seed) {
  // mulberry32: a tiny generator, so that a seed repeats a sample (in this page; PyTorch's differs).
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export async function* generateTokens(step, ids, maxNewTokens, blockSize, pick) {
  // As tinyllm.py's generate with its KV cache: the prompt's last blockSize tokens go in at once, then
  // each new token alone; the cache holds the last blockSize tokens, so the window slides past the context.
  let feed = ids.slice(-blockSize);
  for (let n = 0; n < maxNewTokens; n++) {
    const logits = await step(feed); // (feed.length, vocab_size), flat
    const vocab = logits.length / feed.length;
    const token = pick(logits.subarray((feed.length - 1) * vocab));
    feed = [token];
    yield token;
  }
}

// ---- The page ----------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

async function loadRuntime() {
  // onnxruntime-web from beside the page (export --web copies it there once npm has installed it),
  // else the same version from the CDN.
  const here = new URL(".", location.href).href;
  const local = await fetch(here + "ort-wasm-simd-threaded.wasm", { method: "HEAD" }).then((r) => r.ok, () => false);
  const base = local ? here : CDN;
  const ort = await import(base + "ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = base; // an absolute URL: a relative one would be resolved against the runtime's own
  ort.env.wasm.numThreads = 1; // threads need a cross-origin isolated page, and static hosting is not one
  return ort;
}

function readSettings() {
  const temperature = Number($("temperature").value), topK = Number($("top-k").value);
  const tokens = Number($("tokens").value);
  if (!(temperature >= 0)) throw new Error(`temperature must be >= 0 (0 means greedy), got ${$("temperature").value}`);
  if (!Number.isInteger(topK) || topK < 0) throw new Error(`top-k must be a whole number >= 0 (0: off), got ${$("top-k").value}`);
  if (!Number.isInteger(tokens) || tokens < 1) throw new Error(`tokens must be a whole number >= 1, got ${$("tokens").value}`);
  return { temperature, topK, tokens };
}

function cachedStep(ort, session, cacheShape) {
  // One call of model.onnx (tinyllm.py's CachedForward): the new tokens in, their logits out. The
  // cache, and how many tokens it has seen, stay in here from one call to the next.
  const zeros = () => new ort.Tensor("float32", new Float32Array(cacheShape.reduce((a, b) => a * b)), cacheShape);
  let kCache = zeros(), vCache = zeros(), seen = 0;
  return async (tokens) => {
    const idx = new ort.Tensor("int64", BigInt64Array.from(tokens, BigInt), [1, tokens.length]);
    const out = await session.run({ idx, seen: new ort.Tensor("int64", BigInt64Array.of(BigInt(seen)), []), k_cache: kCache, v_cache: vCache });
    [kCache, vCache, seen] = [out.new_k_cache, out.new_v_cache, seen + tokens.length];
    return out.logits.data;
  };
}

async function run(newStep, tokenizer, blockSize, prompt, seed) {
  const output = $("output");
  document.body.dataset.state = "running";
  $("generate").disabled = true;
  try {
    const { temperature, topK, tokens } = readSettings();
    const ids = tokenizer.encode(prompt);
    if (!ids.length) throw new Error("the prompt is empty: give at least one character");
    const random = seed === null ? Math.random : seededRandom(Number(seed));
    const pick = (logits) => sampleToken(logits, temperature, topK, random);
    const generated = [];
    const start = performance.now();
    let shown = start;
    output.textContent = prompt;
    for await (const token of generateTokens(newStep(), ids, tokens, blockSize, pick)) {
      generated.push(token);
      // Hold back a trailing U+FFFD: a BPE token can be half a character, the next one completes it.
      output.textContent = prompt + tokenizer.decode(generated).replace(/\uFFFD+$/, "");
      const now = performance.now(), seconds = (now - start) / 1000;
      $("stats").textContent = `${generated.length} tokens` + (seconds > 0 ? `, ${(generated.length / seconds).toFixed(1)} tokens/s` : "");
      if (now - shown > 50) { // let the page paint now and then
        await new Promise((resolve) => setTimeout(resolve));
        shown = now;
      }
    }
    output.textContent = prompt + tokenizer.decode(generated);
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
    const info = await fetch("model.json").then((r) => (r.ok ? r.json() : Promise.reject(new Error(`model.json: HTTP ${r.status}`))));
    const ort = await loadRuntime();
    const session = await ort.InferenceSession.create("model.onnx");
    const tokenizer = makeTokenizer(info);
    const blockSize = info.config.block_size;
    const newStep = () => cachedStep(ort, session, info.cache_shape);
    $("about").textContent = `A tiny language model of ${info.parameters.toLocaleString("en")} parameters, trained ` +
      `from scratch with tinyllm, generating text in your browser (context: ${blockSize} tokens, ` +
      `${info.tokenizer.type === "char" ? "one per character" : "byte-level BPE"}).`;
    const params = new URLSearchParams(location.search);
    for (const [name, id] of [["prompt", "prompt"], ["temperature", "temperature"], ["top_k", "top-k"], ["tokens", "tokens"]]) {
      if (params.has(name)) $(id).value = params.get(name);
    }
    $("generate").onclick = () => run(newStep, tokenizer, blockSize, $("prompt").value, params.get("seed"));
    $("generate").disabled = false;
    $("output").textContent = "";
    document.body.dataset.state = "ready";
    // The URL's prompt as it is (a textarea would turn "\r\n" into "\n").
    if (params.has("prompt")) await run(newStep, tokenizer, blockSize, params.get("prompt"), params.get("seed"));
  } catch (error) {
    $("output").textContent = `could not load the model: ${error.message ?? error}`;
    document.body.dataset.state = "error";
  }
}

if (typeof document !== "undefined") main(); // in a page; Node imports the functions above for the tests
