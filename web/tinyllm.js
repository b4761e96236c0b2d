// tinyllm in the browser: what both pages share (page.js continues a prompt, chat.js holds a
// conversation). The model (model.onnx: new token ids and the KV cache -> logits and the new cache)
// runs in onnxruntime-web; the tokenizers, the sampling loop and the chat template are tinyllm.py's,
// written again in JavaScript. model.json holds the config and the tokenizer (and a chat model's
// three chat tokens). Nothing here runs on import, so Node can import it for the tests.

export const ORT_VERSION = "1.30.0"; // onnxruntime-web, as pinned in package.json
const CDN = `https://cdn.jsdelivr.net/npm/onnxruntime-web@${ORT_VERSION}/dist/`;

// ---- Tokenizers: tinyllm.py's CharTokenizer and BPETokenizer -----------------------------------

export class CharTokenizer {
  // One token per character, then the special tokens (a chat model's three) after them. encode only
  // ever gives characters, as in tinyllm.py: no typed text becomes a special token.
  constructor({ chars, special_tokens = [] }) {
    this.chars = [...chars]; // by code point, as Python counts characters
    this.ids = new Map(this.chars.map((c, i) => [c, i]));
    this.itos = [...this.chars, ...special_tokens];
  }

  encode(text) {
    const unknown = [...new Set([...text].filter((c) => !this.ids.has(c)))];
    if (unknown.length) {
      throw new Error(`character(s) ${JSON.stringify(unknown.join(""))} not in this model's vocabulary: ` +
        "use only characters of its training text");
    }
    return [...text].map((c) => this.ids.get(c));
  }

  encodeOrdinary(text) {
    return this.encode(text);
  }

  decode(ids) {
    return ids.map((i) => this.itos[i]).join("");
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
      else ids.push(...this.encodeOrdinary(part));
    }
    return ids;
  }

  encodeOrdinary(text) {
    // The text as plain text: a special token's spelling ("<|end|>") becomes ordinary tokens.
    const ids = [];
    for (const [chunk] of text.matchAll(this.split)) ids.push(...this.encodeChunk(chunk));
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

export function sampleToken(logits, temperature, topK, topP, random) {
  // temperature 0 is greedy (the first of equal maxima, as torch.argmax); otherwise sample from
  // softmax(logits / temperature), over the topK most likely tokens if topK > 0, and over the fewest
  // most likely ones whose probability reaches topP if topP < 1 (nucleus sampling).
  if (temperature === 0) return logits.reduce((best, x, i) => (x > logits[best] ? i : best), 0);
  const scaled = Array.from(logits, (x) => x / temperature);
  const kth = topK > 0 ? [...scaled].sort((a, b) => b - a)[Math.min(topK, scaled.length) - 1] : -Infinity;
  const max = scaled.reduce((a, b) => Math.max(a, b));
  let weights = scaled.map((x) => (x < kth ? 0 : Math.exp(x - max)));
  if (topP < 1) weights = nucleus(weights, topP);
  let r = random() * weights.reduce((a, b) => a + b);
  for (let i = 0; i < weights.length; i++) if ((r -= weights[i]) < 0) return i;
  return weights.findLastIndex((w) => w > 0); // rounding left r just above zero
}

function nucleus(weights, topP) {
  // Keep the most likely tokens while the probability of those before them is below topP, as
  // tinyllm.py's sample_token does; the others get weight 0.
  const total = weights.reduce((a, b) => a + b);
  const order = weights.map((_, i) => i).sort((a, b) => weights[b] - weights[a]);
  const kept = new Array(weights.length).fill(0);
  let before = 0;
  for (const i of order) {
    if (before / total >= topP) break;
    kept[i] = weights[i];
    before += weights[i];
  }
  return kept;
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


// ---- The chat template: tinyllm.py's encode_chat, fit_context and chat ----------------------

const PY_SPACE = /^[\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$/u;

export function isBlank(text) {
  // Whether Python's text.strip() would be empty (JavaScript's trim() has another idea of whitespace).
  return PY_SPACE.test(text);
}

export function encodeTurn(tokenizer, chatTokens, { role, content }) {
  // A message: its speaker's token, its text as ordinary characters, then <|end|>, the tokens by id.
  const speaker = chatTokens[role === "user" ? "<|user|>" : "<|assistant|>"];
  return [speaker, ...tokenizer.encodeOrdinary(content), chatTokens["<|end|>"]];
}

export function fitContext(tokenizer, chatTokens, messages, blockSize, reserve) {
  // The prompt for the next reply: the newest turns that fit, each one whole, starting with a user
  // turn, `reserve` tokens kept free for the reply; a newest turn too long on its own is refused.
  const turns = messages.map((m) => encodeTurn(tokenizer, chatTokens, m));
  const room = blockSize - reserve - 1; // 1: the <|assistant|> token that opens the reply
  const newest = turns[turns.length - 1];
  if (newest.length > room) {
    throw new Error(`the message is ${newest.length - 2} tokens long, but this model's context of ${blockSize} ` +
      `tokens has room for ${room - 2} (the rest is kept for the reply): write a shorter one`);
  }
  let first = turns.length, used = 0;
  while (first > 0 && used + turns[first - 1].length <= room) used += turns[--first].length;
  while (messages[first].role !== "user") first++;
  return [...turns.slice(first).flat(), chatTokens["<|assistant|>"]];
}

export async function* chatReply(step, prompt, settings, blockSize, chatTokens, pick) {
  // The reply's tokens as they come, up to settings.tokens; it ends before <|end|> (or any chat token).
  const stops = new Set(Object.values(chatTokens));
  for await (const token of generateTokens(step, prompt, settings.tokens, blockSize, pick)) {
    if (stops.has(token)) return;
    yield token;
  }
}

// ---- In the page: the runtime, the model, the settings -------------------------------------------

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

function cachedStep(ort, session, cacheShape) {
  // One call of model.onnx (tinyllm.py's CachedForward): the new tokens in, their logits out. The
  // cache (empty at first: cacheShape has 0 tokens), and how many tokens it has seen, stay in here.
  const empty = () => new ort.Tensor("float32", new Float32Array(0), cacheShape);
  let kCache = empty(), vCache = empty(), seen = 0;
  return async (tokens) => {
    const idx = new ort.Tensor("int64", BigInt64Array.from(tokens, BigInt), [1, tokens.length]);
    const out = await session.run({ idx, seen: new ort.Tensor("int64", BigInt64Array.of(BigInt(seen)), []), k_cache: kCache, v_cache: vCache });
    [kCache, vCache, seen] = [out.new_k_cache, out.new_v_cache, seen + tokens.length];
    return out.logits.data;
  };
}

export async function loadModel() {
  // model.json and model.onnx from beside the page: {info, tokenizer, blockSize, newStep}, where
  // newStep() gives a step function with a cache of its own (one per generation, or per reply).
  const info = await fetch("model.json").then((r) => (r.ok ? r.json() : Promise.reject(new Error(`model.json: HTTP ${r.status}`))));
  const ort = await loadRuntime();
  const session = await ort.InferenceSession.create("model.onnx");
  const tokenizer = makeTokenizer(info);
  return { info, tokenizer, blockSize: info.config.block_size, newStep: () => cachedStep(ort, session, info.cache_shape) };
}

export function describeModel({ info, blockSize }, doing) {
  return `A tiny language model of ${info.parameters.toLocaleString("en")} parameters` +
    `${info.int8 ? " (weights in 8 bits)" : ""}, trained from scratch with tinyllm, ${doing} in your browser ` +
    `(context: ${blockSize} tokens, ${info.tokenizer.type === "char" ? "one per character" : "byte-level BPE"}).`;
}

export function applyUrlSettings(params, names) {
  // The URL's settings into their inputs: names maps a URL parameter to an input's id.
  for (const [name, id] of Object.entries(names)) if (params.has(name)) $(id).value = params.get(name);
}

export function readSettings() {
  // The sampling settings from the page's inputs (the same ids on both pages), checked.
  const value = (id) => $(id).value.trim();
  const temperature = Number(value("temperature")), topK = Number(value("top-k")), tokens = Number(value("tokens"));
  const topP = value("top-p") === "" ? 1 : Number(value("top-p"));
  if (!(temperature >= 0)) throw new Error(`temperature must be >= 0 (0 means greedy), got ${value("temperature")}`);
  if (!Number.isInteger(topK) || topK < 0) throw new Error(`top-k must be a whole number >= 0 (0: off), got ${value("top-k")}`);
  if (!(topP > 0 && topP <= 1)) throw new Error(`top-p must be above 0 and at most 1 (1: off), got ${value("top-p")}`);
  if (!Number.isInteger(tokens) || tokens < 1) throw new Error(`tokens must be a whole number >= 1, got ${value("tokens")}`);
  return { temperature, topK, topP, tokens };
}

export function picker(settings, random) {
  return (logits) => sampleToken(logits, settings.temperature, settings.topK, settings.topP, random);
}

export function shownText(tokenizer, ids) {
  // The text so far, without a trailing U+FFFD: a BPE token can be half a character, the next one completes it.
  return tokenizer.decode(ids).replace(/\uFFFD+$/, "");
}

export function rate(count, start) {
  const seconds = (performance.now() - start) / 1000;
  return `${count} tokens` + (seconds > 0 ? `, ${(count / seconds).toFixed(1)} tokens/s` : "");
}

export function letPaint() {
  return new Promise((resolve) => setTimeout(resolve));
}
