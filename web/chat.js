// The chat page: a conversation with a chat model (tinyllm.py chat-train), as `tinyllm.py chat` holds
// it. index.html?chat=FIRST%0ASECOND&temperature=0 sends each line as a user message in turn, each
// once the reply before it has ended (&top_k, &top_p, &tokens and &seed as on the completion page).
// Each reply is in an element of class "reply", and <body data-state> is loading, ready, running,
// done (the last reply has ended) or error (the message is in the conversation, class "error").

import {
  applyUrlSettings, chatReply, describeModel, fitContext, isBlank, letPaint, loadModel, picker, rate, readSettings,
  seededRandom, shownText,
} from "./tinyllm.js";

const $ = (id) => document.getElementById(id);

function addTurn(kind, text) {
  const turn = document.createElement("div");
  turn.className = `turn ${kind}`;
  turn.textContent = text;
  $("conversation").append(turn);
  turn.scrollIntoView?.({ block: "end" });
  return turn;
}

class Conversation {
  // The messages so far, as tinyllm.py's chat takes them; a refused message is not among them.
  constructor(model, seed) {
    this.model = model;
    this.seed = seed;
    this.restart();
  }

  restart() {
    this.messages = [];
    this.random = this.seed === null ? Math.random : seededRandom(Number(this.seed));
    $("conversation").replaceChildren();
    $("stats").textContent = "";
  }

  async send(text) {
    // One user message and the reply, streamed; an error ends up in the conversation and in data-state.
    const { model } = this;
    setBusy(true);
    try {
      if (isBlank(text)) throw new Error("the message is empty: type some text");
      const settings = readSettings();
      const turn = [...this.messages, { role: "user", content: text }];
      const chatTokens = model.info.chat_tokens;
      addTurn("user", text);
      const prompt = fitContext(model.tokenizer, chatTokens, turn, model.blockSize, Math.floor(model.blockSize / 4));
      const reply = await this.stream(prompt, settings, chatTokens);
      this.messages = [...turn, { role: "assistant", content: reply }];
      document.body.dataset.state = "done";
    } catch (error) {
      addTurn("error", String(error.message ?? error));
      document.body.dataset.state = "error";
    } finally {
      setBusy(false);
    }
  }

  async stream(prompt, settings, chatTokens) {
    // The reply, shown token by token in a new element of class "reply"; returns its text.
    const { model } = this, element = addTurn("reply", "");
    const ids = [], start = performance.now();
    let painted = start;
    const tokens = chatReply(model.newStep(), prompt, settings, model.blockSize, chatTokens, picker(settings, this.random));
    for await (const token of tokens) {
      ids.push(token);
      element.textContent = shownText(model.tokenizer, ids);
      $("stats").textContent = rate(ids.length, start);
      if (performance.now() - painted > 50) { // let the page paint now and then
        await letPaint();
        painted = performance.now();
      }
    }
    const text = model.tokenizer.decode(ids);
    element.textContent = text;
    return text;
  }
}

function setBusy(busy) {
  if (busy) document.body.dataset.state = "running";
  for (const id of ["message", "send-button", "new"]) $(id).disabled = busy;
  if (!busy) $("message").focus();
}

function urlMessages(params) {
  // The lines of ?chat=, as `tinyllm.py chat` reads its input: one message a line, a final newline ending the last.
  const lines = params.get("chat").split(/\r\n|\r|\n/);
  if (lines.length > 1 && lines[lines.length - 1] === "") lines.pop();
  return lines;
}

async function main() {
  try {
    const model = await loadModel();
    if (!model.info.chat_tokens) throw new Error("model.json is a text model's: export a chat model (tinyllm.py chat-train)");
    $("about").textContent = describeModel(model, "talking");
    const params = new URLSearchParams(location.search);
    applyUrlSettings(params, { temperature: "temperature", top_k: "top-k", top_p: "top-p", tokens: "tokens" });
    const conversation = new Conversation(model, params.get("seed"));
    $("send").onsubmit = (event) => {
      event.preventDefault();
      const text = $("message").value;
      $("message").value = "";
      conversation.send(text);
    };
    $("new").onclick = () => {
      conversation.restart();
      document.body.dataset.state = "ready";
    };
    setBusy(false);
    document.body.dataset.state = "ready";
    if (params.has("chat")) await sendAll(conversation, urlMessages(params));
  } catch (error) {
    addTurn("error", `could not load the model: ${error.message ?? error}`);
    document.body.dataset.state = "error";
  }
}

async function sendAll(conversation, lines) {
  for (const line of lines) {
    await conversation.send(line);
    if (document.body.dataset.state === "error") return; // as `tinyllm.py chat` stops at a bad line
  }
}

main();
