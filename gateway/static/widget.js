/*! agent-gateway chat widget. No dependencies; served by the gateway at /widget.js.
 *
 * <script src="https://gateway.example/widget.js" defer
 *         data-key="pak_..." data-model="demo"></script>
 *
 * Attributes: data-key (public agent key, required), data-model (model id, required),
 * data-gateway (gateway base URL; default: where this file came from), data-title,
 * data-placeholder, data-open="true" (open at load), data-target (CSS selector of an
 * element to render into instead of a floating panel).
 *
 * The client token lives in memory only (never in storage or cookies); it is fetched
 * when the chat opens and renewed before it expires. Answers are streamed: the POST's
 * server-sent events are read from fetch's ReadableStream and shown as they arrive.
 */
(function () {
  "use strict";

  var script = document.currentScript;
  if (!script) return;
  var data = script.dataset;
  var TOKEN_PATH = "/v1/chat/conversation/public/message/token/";
  var MESSAGES_PATH = "/v1/chat/conversation/public/messages/";
  var SEND_PATH = "/v1/chat/conversation/public/message";

  var CSS = [
    ":host{all:initial;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;",
    "color:#1f2328;--agc-accent:#2563eb;--agc-bg:#fff;--agc-muted:#6b7280}",
    ".launcher{position:fixed;right:20px;bottom:20px;z-index:2147483000;border:0;",
    "border-radius:24px;padding:12px 18px;background:var(--agc-accent);color:#fff;",
    "font:inherit;font-weight:600;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.2)}",
    ".panel{display:flex;flex-direction:column;background:var(--agc-bg);",
    "border:1px solid #d0d7de;border-radius:12px;overflow:hidden;",
    "box-shadow:0 8px 28px rgba(0,0,0,.18);width:360px;height:480px;max-width:100%}",
    ".floating{position:fixed;right:20px;bottom:76px;z-index:2147483000;",
    "max-height:calc(100vh - 96px)}",
    ".inline{width:100%;height:100%;min-height:320px;box-shadow:none}",
    "[hidden]{display:none!important}",
    "header{display:flex;align-items:center;gap:8px;padding:10px 12px;",
    "background:var(--agc-accent);color:#fff}",
    "header h2{flex:1;margin:0;font-size:15px}",
    "header button{border:0;background:transparent;color:#fff;font:inherit;",
    "font-size:16px;cursor:pointer;padding:2px 6px;border-radius:6px}",
    "header button:hover{background:rgba(255,255,255,.2)}",
    ".log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:8px}",
    ".msg{max-width:85%;padding:8px 11px;border-radius:12px;white-space:pre-wrap;",
    "overflow-wrap:anywhere}",
    ".user{align-self:flex-end;background:var(--agc-accent);color:#fff}",
    ".assistant{align-self:flex-start;background:#f1f3f5}",
    ".assistant[data-state=streaming]::after{content:'\\258d';opacity:.6}",
    ".note{align-self:center;color:var(--agc-muted);font-size:12px}",
    ".status{padding:6px 12px;font-size:13px;color:#8a1c1c;background:#fdecec}",
    "form{display:flex;gap:8px;padding:10px;border-top:1px solid #e5e7eb}",
    "textarea{flex:1;resize:none;font:inherit;padding:8px;border:1px solid #d0d7de;",
    "border-radius:8px;min-height:20px;max-height:120px}",
    "form button{border:0;border-radius:8px;padding:0 14px;background:var(--agc-accent);",
    "color:#fff;font:inherit;font-weight:600;cursor:pointer}",
    "form button:disabled,textarea:disabled{opacity:.55;cursor:not-allowed}",
  ].join("");

  function baseUrl() {
    var raw = data.gateway || new URL(".", script.src).href;
    return raw.replace(/\/+$/, "");
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      node.setAttribute(name, attrs[name]);
    });
    if (text) node.textContent = text;
    return node;
  }

  function ChatError(message, status, code, retryAfter) {
    this.message = message;
    this.status = status || 0;
    this.code = code || "";
    this.retryAfter = retryAfter || 0;
  }

  /* What a visitor reads for each refusal; `problem` is the gateway's RFC 9457 body. */
  async function refusal(resp) {
    var problem = {};
    try {
      problem = await resp.json();
    } catch (ignored) {
      problem = {};
    }
    var code = problem.code || "";
    var retry = parseInt(resp.headers.get("Retry-After") || "0", 10) || 0;
    var text;
    if (resp.status === 429) {
      text = "Too many messages. Please wait " + (retry || "a few") + " seconds and try again.";
    } else if (resp.status === 403 && code === "origin_not_allowed") {
      text = "This website is not allowed to use this chat.";
    } else if (resp.status === 403) {
      text = "This chat session is no longer valid. Start a new conversation with \u21bb.";
    } else if (resp.status === 404 && (code === "key_not_found" || code === "model_not_found")) {
      text = "This chat is not available (unknown key or model).";
    } else if (resp.status === 401) {
      text = "This chat is not configured (missing key).";
    } else if (resp.status >= 500) {
      text = "The assistant is unavailable right now. Please try again later.";
    } else {
      text = problem.detail || "The request was refused (" + resp.status + ").";
    }
    return new ChatError(text, resp.status, code, retry);
  }

  function networkError() {
    return new ChatError(
      "Cannot reach the chat service (offline, or this website is not allowed to use it)."
    );
  }

  /* Splits a text/event-stream into events: {event, data}. Handles CRLF, comments,
   * multi-line data and events cut across chunks. */
  function SseParser(onEvent) {
    var buffer = "";
    var event = "";
    var lines = [];
    function line(text) {
      if (text === "") {
        if (lines.length) onEvent({ event: event || "message", data: lines.join("\n") });
        event = "";
        lines = [];
      } else if (text.charAt(0) === ":") {
        return;
      } else {
        var colon = text.indexOf(":");
        var field = colon < 0 ? text : text.slice(0, colon);
        var value = colon < 0 ? "" : text.slice(colon + 1).replace(/^ /, "");
        if (field === "data") lines.push(value);
        else if (field === "event") event = value;
      }
    }
    this.push = function (chunk) {
      buffer += chunk;
      var match;
      while ((match = /\r\n|\r|\n/.exec(buffer))) {
        if (match[0] === "\r" && match.index === buffer.length - 1) break; // maybe \r\n
        line(buffer.slice(0, match.index));
        buffer = buffer.slice(match.index + match[0].length);
      }
    };
    this.end = function () {
      if (buffer) line(buffer);
      line("");
    };
  }

  function deltaOf(payload) {
    if (typeof payload.delta === "string") return payload.delta;
    var choice = payload.choices && payload.choices[0];
    var delta = choice && choice.delta && choice.delta.content;
    return typeof delta === "string" ? delta : "";
  }

  function Chat(options) {
    this.options = options;
    this.token = null; // in memory only
    this.expiresAt = 0;
    this.ttl = 0;
    this.pendingToken = null;
    this.renewTimer = 0;
    this.stale = false;
    this.sent = false;
    this.busy = false;
    this.edits = 0; // bumped by every message added, so a late history load cannot wipe it
    this.blockedUntil = 0;
    this.render();
  }

  Chat.prototype.render = function () {
    var self = this;
    var opts = this.options;
    var host = el("div", { "data-agent-gateway-chat": "" });
    var target = opts.target ? document.querySelector(opts.target) : null;
    (target || document.body).appendChild(host);
    var root = host.attachShadow({ mode: "open" });
    if (root.adoptedStyleSheets !== undefined && typeof CSSStyleSheet === "function") {
      var sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS); // constructable: not subject to the page's style-src CSP
      root.adoptedStyleSheets = [sheet];
    } else {
      root.appendChild(el("style", {}, CSS));
    }
    var panel = el("section", {
      class: "panel " + (target ? "inline" : "floating"),
      role: "dialog",
      "aria-label": opts.title,
    });
    var header = el("header");
    header.appendChild(el("h2", {}, opts.title));
    this.reloadButton = el("button", {
      type: "button",
      class: "reload",
      title: "Reload the conversation",
      "aria-label": "Reload the conversation",
    }, "\u21bb");
    header.appendChild(this.reloadButton);
    this.log = el("div", { class: "log", role: "log", "aria-live": "polite" });
    this.status = el("div", { class: "status", role: "alert" });
    this.status.hidden = true;
    var form = el("form");
    this.input = el("textarea", {
      rows: "1",
      placeholder: opts.placeholder,
      "aria-label": "Your message",
      maxlength: "8000",
    });
    this.sendButton = el("button", { type: "submit", class: "send" }, "Send");
    form.appendChild(this.input);
    form.appendChild(this.sendButton);
    panel.appendChild(header);
    panel.appendChild(this.log);
    panel.appendChild(this.status);
    panel.appendChild(form);
    root.appendChild(panel);
    this.panel = panel;

    if (!target) {
      this.launcher = el("button", {
        type: "button",
        class: "launcher",
        "aria-expanded": "false",
      }, opts.title);
      root.insertBefore(this.launcher, panel);
      panel.hidden = true;
      header.appendChild(el("button", {
        type: "button",
        class: "close",
        title: "Close",
        "aria-label": "Close the chat",
      }, "\u2715"));
      header.lastChild.addEventListener("click", function () { self.close(); });
      this.launcher.addEventListener("click", function () {
        if (panel.hidden) self.open();
        else self.close();
      });
    }
    this.reloadButton.addEventListener("click", function () {
      if (self.busy) return; // never under an answer being written
      if (self.stale || !self.token) {
        self.open();
        return;
      }
      self.setBusy(true);
      self.loadHistory().catch(function (err) { self.showError(err); }).then(function () {
        self.setBusy(false);
      });
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      self.submit();
    });
    this.input.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        self.submit();
      }
    });
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && self.isOpen() && self.stale) self.renew();
    });
  };

  Chat.prototype.isOpen = function () {
    return !this.panel.hidden;
  };

  Chat.prototype.open = async function () {
    this.panel.hidden = false;
    if (this.launcher) this.launcher.setAttribute("aria-expanded", "true");
    if (this.busy) return;
    this.setBusy(true); // nothing is sent before the conversation is loaded
    try {
      await this.ensureToken();
      await this.loadHistory();
    } catch (err) {
      this.showError(err);
    } finally {
      this.setBusy(false);
    }
    this.input.focus();
  };

  Chat.prototype.close = function () {
    this.panel.hidden = true;
    if (this.launcher) this.launcher.setAttribute("aria-expanded", "false");
  };

  Chat.prototype.url = function (path) {
    return this.options.gateway + path;
  };

  /* A token valid for at least the renewal margin; one request at a time. */
  Chat.prototype.ensureToken = function () {
    if (this.token && !this.stale && Date.now() < this.expiresAt - this.margin()) {
      return Promise.resolve(this.token);
    }
    return this.renew();
  };

  Chat.prototype.margin = function () {
    return Math.min(60, Math.max(5, this.ttl * 0.1)) * 1000;
  };

  Chat.prototype.renew = function () {
    var self = this;
    if (this.pendingToken) return this.pendingToken;
    this.pendingToken = (async function () {
      var resp;
      try {
        resp = await fetch(self.url(TOKEN_PATH + encodeURIComponent(self.options.model)), {
          headers: { Authorization: "Bearer " + self.options.key },
          credentials: "omit",
          cache: "no-store",
        });
      } catch (err) {
        throw networkError();
      }
      if (!resp.ok) throw await refusal(resp);
      var body = await resp.json();
      var hadConversation = self.sent;
      self.token = body.token;
      // expires_in is relative, so a visitor's wrong clock does not matter
      self.ttl = Number(body.expires_in) || 60;
      self.expiresAt = Date.now() + self.ttl * 1000;
      self.stale = false;
      self.sent = false;
      self.schedule();
      if (hadConversation) self.note("A new conversation has started.");
      self.clearError();
      return self.token;
    })();
    this.pendingToken.then(
      function () { self.pendingToken = null; },
      function () { self.pendingToken = null; }
    );
    return this.pendingToken;
  };

  /* Renew before expiry while the chat is open and visible; otherwise on next use. */
  Chat.prototype.schedule = function () {
    var self = this;
    clearTimeout(this.renewTimer);
    var wait = Math.max(0, this.expiresAt - this.margin() - Date.now());
    this.renewTimer = setTimeout(function () {
      self.stale = true;
      if (self.isOpen() && !document.hidden) {
        self.renew().catch(function (err) { self.showError(err); });
      }
    }, wait);
  };

  Chat.prototype.loadHistory = async function () {
    var edits = this.edits;
    var token = await this.ensureToken();
    var resp;
    try {
      resp = await fetch(this.url(MESSAGES_PATH + encodeURIComponent(token)), {
        credentials: "omit",
        cache: "no-store",
      });
    } catch (err) {
      throw networkError();
    }
    if (resp.status === 404) {
      var problem = await resp.json().catch(function () { return {}; });
      if (problem.code === "conversation_not_found") {
        if (edits === this.edits) this.replaceLog([]); // nothing said yet
        return;
      }
      throw new ChatError("The conversation could not be loaded.", 404, problem.code);
    }
    if (!resp.ok) throw await refusal(resp);
    var body = await resp.json();
    if (edits !== this.edits) return; // a message was sent meanwhile: keep what is shown
    this.replaceLog(Array.isArray(body.messages) ? body.messages : []);
  };

  Chat.prototype.replaceLog = function (messages) {
    var self = this;
    this.log.textContent = "";
    messages.forEach(function (message) {
      if (message && (message.role === "user" || message.role === "assistant")) {
        self.bubble(message.role, String(message.content || ""));
      }
    });
    this.sent = messages.length > 0;
  };

  Chat.prototype.bubble = function (role, text) {
    var node = el("div", { class: "msg " + role, "data-role": role });
    node.textContent = text; // never HTML: answers cannot inject markup
    this.log.appendChild(node);
    this.log.scrollTop = this.log.scrollHeight;
    return node;
  };

  Chat.prototype.note = function (text) {
    this.log.appendChild(el("div", { class: "note" }, text));
  };

  Chat.prototype.setBusy = function (busy) {
    this.busy = busy;
    var blocked = busy || Date.now() < this.blockedUntil;
    this.input.disabled = blocked;
    this.sendButton.disabled = blocked;
  };

  Chat.prototype.submit = async function () {
    var text = this.input.value.trim();
    if (!text || this.busy || Date.now() < this.blockedUntil) return;
    this.clearError();
    this.setBusy(true);
    var answer = null;
    try {
      var token = await this.ensureToken();
      this.input.value = "";
      this.edits += 1;
      this.bubble("user", text);
      answer = this.bubble("assistant", "");
      answer.setAttribute("data-state", "streaming");
      var resp = await this.post(token, text);
      if (resp.status === 403) {
        var problem = await resp.clone().json().catch(function () { return {}; });
        if (problem.code === "token_expired") {
          // the token died in transit (e.g. a laptop asleep): once more with a new one
          this.stale = true;
          resp = await this.post(await this.ensureToken(), text);
        }
      }
      if (!resp.ok) throw await refusal(resp);
      this.sent = true;
      if ((resp.headers.get("Content-Type") || "").indexOf("text/event-stream") === 0) {
        await this.readStream(resp, answer);
      } else {
        var body = await resp.json();
        answer.textContent = (body.message && body.message.content) || "";
      }
      answer.setAttribute("data-state", "done");
    } catch (err) {
      if (answer && !answer.textContent) answer.remove();
      else if (answer) answer.setAttribute("data-state", "failed");
      if (!answer) this.input.value = text;
      this.showError(err);
    } finally {
      this.setBusy(false);
    }
  };

  Chat.prototype.post = async function (token, text) {
    try {
      return await fetch(this.url(SEND_PATH), {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({ client_token: token, message: text, stream: true }),
        credentials: "omit",
        cache: "no-store",
      });
    } catch (err) {
      throw networkError();
    }
  };

  Chat.prototype.readStream = async function (resp, answer) {
    var self = this;
    var failure = null;
    var finished = false;
    var parser = new SseParser(function (event) {
      var payload;
      try {
        payload = JSON.parse(event.data);
      } catch (ignored) {
        return; // e.g. "[DONE]"
      }
      if (event.event === "error") {
        failure = new ChatError(
          "The answer was interrupted. Please try again.", 502, payload.code || ""
        );
      } else if (event.event === "done") {
        finished = true;
        if (payload.message && typeof payload.message.content === "string") {
          answer.textContent = payload.message.content;
        }
      } else {
        var delta = deltaOf(payload);
        if (delta) {
          answer.textContent += delta;
          self.log.scrollTop = self.log.scrollHeight;
        }
      }
    });
    var reader = resp.body.getReader();
    var decoder = new TextDecoder();
    try {
      for (;;) {
        var step = await reader.read();
        if (step.done) break;
        parser.push(decoder.decode(step.value, { stream: true }));
      }
    } catch (err) {
      if (!finished) throw new ChatError("The answer was interrupted. Please try again.");
    }
    parser.push(decoder.decode());
    parser.end();
    if (failure) throw failure;
  };

  Chat.prototype.showError = function (err) {
    var self = this;
    var message = err instanceof ChatError ? err.message : "Something went wrong.";
    this.status.textContent = message;
    this.status.hidden = false;
    this.status.setAttribute("data-status", String(err.status || 0));
    this.status.setAttribute("data-code", err.code || "");
    if (err.status === 403 && err.code !== "origin_not_allowed") this.stale = true;
    if (err.retryAfter) {
      this.blockedUntil = Date.now() + err.retryAfter * 1000;
      this.setBusy(this.busy);
      setTimeout(function () {
        self.setBusy(self.busy);
        if (self.status.getAttribute("data-status") === "429") self.clearError();
      }, err.retryAfter * 1000);
    }
  };

  Chat.prototype.clearError = function () {
    this.status.hidden = true;
    this.status.textContent = "";
    this.status.removeAttribute("data-status");
    this.status.removeAttribute("data-code");
  };

  if (!data.key || !data.model) {
    console.error("agent-gateway widget: data-key and data-model are required");
    return;
  }
  var options = {
    gateway: baseUrl(),
    key: data.key,
    model: data.model,
    title: data.title || "Chat",
    placeholder: data.placeholder || "Type a message\u2026",
    target: data.target || "",
  };
  var api = (window.AgentGatewayChat = window.AgentGatewayChat || []);

  function start() {
    var chat = new Chat(options);
    api.push({
      open: function () { return chat.open(); },
      close: function () { chat.close(); },
      reload: function () { return chat.loadHistory(); },
    });
    if (data.open === "true" || options.target) chat.open();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
