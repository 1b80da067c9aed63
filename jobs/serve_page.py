"""The page at GET /: one prompt, the base's and every adapter's answer side by side, streamed,
with the sampling settings; the quickest way to see what tuning changed. Plain HTML and a little
JavaScript over the same OpenAI endpoints a program calls (no framework, nothing to build)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>twinlora serve</title>
<style>
body{font:15px system-ui,sans-serif;margin:1.5em;max-width:1400px}
textarea{width:100%;height:5em;font:inherit}
label{margin-right:1em} input[type=number]{width:5em}
#answers{display:flex;gap:1em;margin-top:1em;flex-wrap:wrap}
.col{flex:1 1 280px;border:1px solid #ccc;border-radius:6px;padding:.6em;min-height:6em}
.col h3{margin:0 0 .4em;font-size:1em} .col pre{white-space:pre-wrap;margin:0;font:inherit}
.err{color:#b00020} .meta{color:#666;font-size:.85em;margin-top:.4em}
</style></head><body>
<h2>twinlora serve: base and adapters side by side</h2>
<textarea id="prompt" placeholder="Type a message">Que dit l'article L100-1 ?</textarea>
<div>
<label>temperature <input id="temperature" type="number" step="0.1" min="0" max="2" value="0"></label>
<label>top_p <input id="top_p" type="number" step="0.05" min="0.05" max="1" value="1"></label>
<label>max_tokens <input id="max_tokens" type="number" min="1" value="64"></label>
<label>seed <input id="seed" type="number" min="0" value="0"></label>
<label>API key <input id="key" type="password" size="12"></label>
<button id="send">Send</button>
</div>
<div id="status" class="meta"></div>
<div id="answers"></div>
<script>
const $ = id => document.getElementById(id);
function headers() {
  const h = {"Content-Type": "application/json"};
  if ($("key").value) h["Authorization"] = "Bearer " + $("key").value;
  return h;
}
async function errorText(r) {
  try { return (await r.json()).error.message; } catch (e) { return r.status + " " + r.statusText; }
}
async function models() {
  const r = await fetch("/v1/models", {headers: headers()});
  if (!r.ok) throw new Error(await errorText(r));
  return (await r.json()).data.map(m => m.id);
}
function column(id) {
  const col = document.createElement("div");
  col.className = "col";
  col.innerHTML = "<h3></h3><pre></pre><div class=meta></div>";
  col.querySelector("h3").textContent = id;
  $("answers").appendChild(col);
  return col;
}
async function answer(model, col) {
  const out = col.querySelector("pre"), meta = col.querySelector(".meta");
  const body = {model, stream: true, messages: [{role: "user", content: $("prompt").value}],
    temperature: +$("temperature").value, top_p: +$("top_p").value,
    max_tokens: +$("max_tokens").value, seed: +$("seed").value};
  const t0 = performance.now();
  const r = await fetch("/v1/chat/completions", {method: "POST", headers: headers(), body: JSON.stringify(body)});
  if (!r.ok) { out.className = "err"; out.textContent = await errorText(r); return; }
  const reader = r.body.getReader(), dec = new TextDecoder();
  let buf = "", n = 0;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buf += dec.decode(value, {stream: true});
    const events = buf.split(/\\r?\\n\\r?\\n/); buf = events.pop();
    for (const ev of events) {
      const data = ev.split(/\\r?\\n/).filter(l => l.startsWith("data:")).map(l => l.slice(5).trim()).join("");
      if (!data || data === "[DONE]") continue;
      const msg = JSON.parse(data);
      if (msg.error) { out.className = "err"; out.textContent += msg.error.message; continue; }
      const c = msg.choices[0];
      if (c.delta && c.delta.content) { out.textContent += c.delta.content; n++; }
      if (c.finish_reason) meta.textContent = "finish: " + c.finish_reason + ", " +
        (msg.usage ? msg.usage.completion_tokens : n) + " tokens, " + ((performance.now() - t0) / 1000).toFixed(2) + " s";
    }
  }
}
$("send").onclick = async () => {
  $("answers").innerHTML = ""; $("status").textContent = "";
  let ids;
  try { ids = await models(); } catch (e) { $("status").className = "err"; $("status").textContent = e.message; return; }
  $("status").className = "meta";
  $("status").textContent = "the server answers one request at a time: the columns fill in turn";
  const cols = ids.map(id => [id, column(id)]);
  for (const [id, col] of cols) await answer(id, col);
};
</script></body></html>
"""
