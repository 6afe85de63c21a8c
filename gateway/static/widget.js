/*! agent-gateway chat widget. No dependencies; served by the gateway at /widget.js.
 *
 * <script src="https://gateway.example/widget.js" defer
 *         data-key="pak_..." data-model="demo"></script>
 *
 * Attributes: data-key (public agent key, required), data-model (model id, required),
 * data-gateway (gateway base URL; default: where this file came from), data-title,
 * data-placeholder, data-locale (fr, en; default: the page's lang, else the browser's),
 * data-open="true" (open at load), data-target (CSS selector of an element to render
 * into instead of a floating panel). Theming: the --agc-* CSS custom properties
 * (docs/browser.md).
 *
 * The client token lives in memory only (never in storage or cookies); it is fetched
 * when the chat opens and renewed before it expires. Answers are streamed: the POST's
 * server-sent events are read from fetch's ReadableStream and rendered as they arrive,
 * as a safe subset of Markdown built from DOM nodes and text (never HTML).
 */
(function () {
  "use strict";

  var script = document.currentScript;
  if (!script) return;
  var data = script.dataset;
  var TOKEN_PATH = "/v1/chat/conversation/public/message/token/";
  var MESSAGES_PATH = "/v1/chat/conversation/public/messages/";
  var SEND_PATH = "/v1/chat/conversation/public/message";
  var REFRESH_PATH = "/v1/chat/conversation/public/token/refresh";
  /* Refusals after which the conversation cannot go on: the visitor is told, and the
   * reload button starts a new one. */
  var ENDED = { token_reuse_suspected: 1, conversation_expired: 1, token_revoked: 1 };
  /* A renewal whose answer did not arrive is asked again after these waits. */
  var REFRESH_RETRIES_MS = [500, 1000, 2000];

  /* ---- Messages: every text a visitor sees, by locale ---- */

  var RESTART = " Start a new conversation with \u21bb.";
  var MESSAGES = {
    en: {
      title: "Chat",
      placeholder: "Type a message\u2026",
      input: "Your message",
      send: "Send",
      reload: "Reload the conversation",
      close: "Close the chat",
      log: "Conversation",
      said: "Assistant: {text}",
      newConversation: "A new conversation has started.",
      rateLimited: "Too many messages. Please wait {wait} and try again.",
      rateLimitedSoon: "Too many messages. Please wait a few seconds and try again.",
      originNotAllowed: "This website is not allowed to use this chat.",
      sessionInvalid: "This chat session is no longer valid." + RESTART,
      conversationExpired: "This chat has reached its maximum length." + RESTART,
      tokenReuse: "This chat was opened elsewhere." + RESTART,
      notAvailable: "This chat is not available (unknown key or model).",
      notConfigured: "This chat is not configured (missing key).",
      tooLong: "This message is too long.",
      unavailable: "The assistant is unavailable right now. Please try again later.",
      refused: "The request was refused ({status}).",
      network: "Cannot reach the chat service (offline, or this website is not allowed to use it).",
      interrupted: "The answer was interrupted. Please try again.",
      notLoaded: "The conversation could not be loaded.",
      unknown: "Something went wrong.",
    },
    fr: {
      title: "Discussion",
      placeholder: "\u00c9crivez un message\u2026",
      input: "Votre message",
      send: "Envoyer",
      reload: "Recharger la conversation",
      close: "Fermer la discussion",
      log: "Conversation",
      said: "Assistant\u00a0: {text}",
      newConversation: "Une nouvelle conversation a commenc\u00e9.",
      rateLimited: "Trop de messages. Veuillez patienter {wait} avant de r\u00e9essayer.",
      rateLimitedSoon: "Trop de messages. Veuillez patienter quelques secondes avant de r\u00e9essayer.",
      originNotAllowed: "Ce site n\u2019est pas autoris\u00e9 \u00e0 utiliser cette discussion.",
      sessionInvalid: "Cette session n\u2019est plus valide. Commencez une nouvelle conversation avec \u21bb.",
      conversationExpired: "Cette discussion a atteint sa dur\u00e9e maximale. Commencez-en une nouvelle avec \u21bb.",
      tokenReuse: "Cette discussion a \u00e9t\u00e9 ouverte ailleurs. Commencez une nouvelle conversation avec \u21bb.",
      notAvailable: "Cette discussion n\u2019est pas disponible (cl\u00e9 ou mod\u00e8le inconnu).",
      notConfigured: "Cette discussion n\u2019est pas configur\u00e9e (cl\u00e9 manquante).",
      tooLong: "Ce message est trop long.",
      unavailable: "L\u2019assistant est indisponible pour le moment. Veuillez r\u00e9essayer plus tard.",
      refused: "La demande a \u00e9t\u00e9 refus\u00e9e ({status}).",
      network: "Impossible de joindre le service de discussion (hors ligne, ou ce site n\u2019est pas autoris\u00e9 \u00e0 l\u2019utiliser).",
      interrupted: "La r\u00e9ponse a \u00e9t\u00e9 interrompue. Veuillez r\u00e9essayer.",
      notLoaded: "La conversation n\u2019a pas pu \u00eatre charg\u00e9e.",
      unknown: "Une erreur s\u2019est produite.",
    },
  };

  /* Problem codes (RFC 9457 bodies) to catalogue entries; statuses decide the rest. */
  var CODES = {
    rate_limited: "rateLimited",
    too_many_connections: "rateLimited",
    origin_not_allowed: "originNotAllowed",
    token_invalid: "sessionInvalid",
    token_expired: "sessionInvalid",
    token_revoked: "sessionInvalid",
    conversation_expired: "conversationExpired",
    token_reuse_suspected: "tokenReuse",
    key_not_found: "notAvailable",
    model_not_found: "notAvailable",
    missing_credentials: "notConfigured",
    payload_too_large: "tooLong",
  };

  /* data-locale, else the page's lang, else the browser's language; English otherwise. */
  function pickLocale() {
    var wanted = [data.locale, document.documentElement.lang, navigator.language];
    for (var i = 0; i < wanted.length; i++) {
      var tag = String(wanted[i] || "").trim();
      var base = tag.split(/[-_]/)[0].toLowerCase();
      if (MESSAGES[base]) {
        var intl = base;
        try {
          intl = Intl.getCanonicalLocales(tag.replace(/_/g, "-"))[0] || base;
        } catch (ignored) {
          intl = base;
        }
        return { lang: base, intl: intl };
      }
    }
    return { lang: "en", intl: "en" };
  }

  var LOCALE = pickLocale();
  var TEXT = MESSAGES[LOCALE.lang];

  function t(name, vars) {
    return TEXT[name].replace(/\{(\w+)\}/g, function (whole, key) {
      return vars && key in vars ? String(vars[key]) : whole;
    });
  }

  /* "3 seconds", "5 minutes", "1,5 heure": the wait in the visitor's words and numbers. */
  function duration(seconds) {
    var unit = "second";
    var value = seconds;
    if (seconds >= 3600) {
      unit = "hour";
      value = Math.ceil(seconds / 360) / 10;
    } else if (seconds >= 120) {
      unit = "minute";
      value = Math.ceil(seconds / 60);
    }
    try {
      return new Intl.NumberFormat(LOCALE.intl, {
        style: "unit",
        unit: unit,
        unitDisplay: "long",
        maximumFractionDigits: 1,
      }).format(value);
    } catch (ignored) {
      return value + " " + unit + "s";
    }
  }

  /* ---- Styles: isolated in the shadow root, themed by --agc-* custom properties ---- */

  var DARK = "@media (prefers-color-scheme:dark){";
  var CSS = [
    ":host{all:initial!important;display:block!important}",
    ".w{--a:var(--agc-accent,#2563eb);--on:var(--agc-on-accent,#fff);--bg:var(--agc-bg,#fff);",
    "--fg:var(--agc-fg,#1f2328);--mu:var(--agc-muted,#5f6672);--bu:var(--agc-bubble,#eef1f4);",
    "--bd:var(--agc-border,#d0d7de);--ln:var(--agc-link,#1d4ed8);--cd:var(--agc-code-bg,#dfe3e8);",
    "--er:#8a1c1c;--erbg:#fdecec;--r:var(--agc-radius,12px);",
    "font:14px/1.45 var(--agc-font,system-ui,-apple-system,'Segoe UI',Roboto,sans-serif);",
    "color:var(--fg);height:100%}",
    DARK, ".w{--a:var(--agc-dark-accent,#2563eb);--on:var(--agc-dark-on-accent,#fff);",
    "--bg:var(--agc-dark-bg,#1c2128);--fg:var(--agc-dark-fg,#e6edf3);--mu:var(--agc-dark-muted,#a3acb7);",
    "--bu:var(--agc-dark-bubble,#2d333b);--bd:var(--agc-dark-border,#444c56);",
    "--ln:var(--agc-dark-link,#93c5fd);--cd:var(--agc-dark-code-bg,#3d444d);",
    "--er:#ffc1c1;--erbg:#4a1f1f}}",
    "button,textarea{font:inherit;color:inherit}",
    ".launcher{position:fixed;right:var(--agc-right,20px);left:var(--agc-left,auto);",
    "bottom:var(--agc-bottom,20px);z-index:var(--agc-z-index,2147483000);border:0;",
    "border-radius:24px;padding:12px 18px;background:var(--a);color:var(--on);",
    "font-weight:600;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25)}",
    ".panel{display:flex;flex-direction:column;background:var(--bg);color:var(--fg);",
    "border:1px solid var(--bd);border-radius:var(--r);overflow:hidden;box-sizing:border-box;",
    "box-shadow:0 8px 28px rgba(0,0,0,.2);width:var(--agc-width,370px);",
    "height:var(--agc-height,500px);max-width:100%}",
    ".floating{position:fixed;right:var(--agc-right,20px);left:var(--agc-left,auto);",
    "bottom:calc(var(--agc-bottom,20px) + 56px);z-index:var(--agc-z-index,2147483000);",
    "max-height:calc(100vh - 96px);max-width:calc(100vw - 16px);animation:agc-in .18s ease-out}",
    "@media (max-width:480px){.floating{left:8px;right:8px;width:auto;",
    "bottom:calc(var(--agc-bottom,20px) + 52px);height:calc(100vh - 88px)}}",
    "@keyframes agc-in{from{opacity:0;transform:translateY(8px)}}",
    "@keyframes agc-blink{50%{opacity:0}}",
    ".inline{width:100%;height:100%;min-height:320px;box-shadow:none}",
    "[hidden]{display:none!important}",
    "header{display:flex;align-items:center;gap:8px;padding:10px 12px;",
    "background:var(--a);color:var(--on)}",
    "h2{flex:1;margin:0;font-size:15px}",
    "header button{border:0;background:transparent;color:var(--on);font-size:16px;",
    "cursor:pointer;padding:2px 6px;border-radius:6px}",
    "header button:hover{background:rgba(255,255,255,.2)}",
    ":focus-visible{outline:2px solid var(--ln);outline-offset:2px}",
    "header :focus-visible{outline-color:var(--on)}",
    ".log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:8px;",
    "scroll-behavior:smooth}",
    ".msg{max-width:85%;padding:8px 11px;border-radius:var(--r);overflow-wrap:anywhere}",
    ".user{align-self:flex-end;background:var(--a);color:var(--on);white-space:pre-wrap}",
    ".assistant{align-self:flex-start;background:var(--bu)}",
    ".assistant[data-state=streaming]::after{content:'\\258d';opacity:.6;",
    "animation:agc-blink 1s steps(1) infinite}",
    ".assistant>*{margin:0 0 .55em}.assistant>:last-child{margin-bottom:0}",
    ".assistant ul,.assistant ol{padding-left:1.4em}.assistant li>ul,.assistant li>ol{margin:0}",
    ".assistant a{color:var(--ln);text-decoration:underline}",
    ".assistant blockquote{padding-left:9px;border-left:3px solid var(--bd)}",
    "code{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;",
    "background:var(--cd);padding:1px 4px;border-radius:4px}",
    "pre{padding:8px;overflow-x:auto;background:var(--cd);border-radius:6px}",
    "pre code{padding:0;background:none;white-space:pre}",
    ".note{align-self:center;color:var(--mu);font-size:12px}",
    ".status{padding:6px 12px;font-size:13px;color:var(--er);background:var(--erbg)}",
    "form{display:flex;gap:8px;padding:10px;border-top:1px solid var(--bd)}",
    "textarea{flex:1;resize:none;padding:8px;border:1px solid var(--bd);background:var(--bg);",
    "border-radius:8px;min-height:20px;max-height:120px}",
    "form button{border:0;border-radius:8px;padding:0 14px;background:var(--a);",
    "color:var(--on);font-weight:600;cursor:pointer}",
    "form button:disabled,textarea:disabled{opacity:.55;cursor:not-allowed}",
    ".sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);",
    "white-space:nowrap}",
    "@media (prefers-reduced-motion:reduce){.floating,.assistant[data-state=streaming]::after",
    "{animation:none}.log{scroll-behavior:auto}}",
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

  /* ---- Markdown: a safe subset, from DOM nodes and text only (never HTML) ---- */

  var SCHEMES = { "http:": 1, "https:": 1, "mailto:": 1 };
  var FENCE = /^ {0,3}(`{3,}|~{3,})/;
  var ITEM = /^( *)([-*+]|\d{1,9}[.)])[ \t]+(.*)$/;
  var HEADING = /^ {0,3}#{1,6}[ \t]+(.*?)[ \t#]*$/;
  var QUOTE = /^ {0,3}> ?(.*)$/;
  var RULE = /^ {0,3}([-*_])([ \t]*\1){2,}[ \t]*$/;
  var ESCAPABLE = "\\`*_{}[]()#+-.!~>|";
  var REACH = 600; // how far a closing marker is looked for, so hostile text stays linear
  var PLAIN = 20000; // a block longer than this is shown as plain text
  var DEEP = 12; // nesting (emphasis in emphasis, quote in quote) beyond this is text

  /* Whether `line` closes the code fence opened by `mark` (``` or ~~~, or longer). */
  function closesFence(line, mark) {
    var fence = FENCE.exec(line);
    return !!fence && fence[1].charAt(0) === mark.charAt(0) && fence[1].length >= mark.length &&
      !line.trim().slice(fence[1].length).trim();
  }

  function safeHref(raw) {
    try {
      var url = new URL(raw);
      return SCHEMES[url.protocol] === 1 ? url.href : null;
    } catch (ignored) {
      return null;
    }
  }

  /* The end of the marker `mark` closing at or after `from` (not after a space), or -1. */
  function closing(text, mark, from) {
    var limit = Math.min(text.length, from + REACH);
    for (var j = text.indexOf(mark, from); j >= 0 && j < limit; j = text.indexOf(mark, j + 1)) {
      if (j > from && !/\s/.test(text.charAt(j - 1))) {
        if (mark.length === 1 && text.charAt(j + 1) === mark) {
          j += 1;
          continue;
        }
        if (mark.charAt(0) === "_" && /\w/.test(text.charAt(j + mark.length))) continue;
        return j;
      }
    }
    return -1;
  }

  function inline(parent, text, inLink, depth) {
    depth = (depth || 0) + 1;
    if (depth > DEEP) {
      parent.appendChild(document.createTextNode(text));
      return;
    }
    var buf = "";
    function flush() {
      if (buf) parent.appendChild(document.createTextNode(buf));
      buf = "";
    }
    var i = 0;
    while (i < text.length) {
      var c = text.charAt(i);
      var next = text.charAt(i + 1);
      if (c === "\\" && next && ESCAPABLE.indexOf(next) >= 0) {
        buf += next;
        i += 2;
        continue;
      }
      if (c === "\n") {
        flush();
        parent.appendChild(el("br"));
        i += 1;
        continue;
      }
      if (c === "`") {
        var n = 1;
        while (text.charAt(i + n) === "`") n += 1;
        var mark = text.substr(i, n);
        var end = text.indexOf(mark, i + n);
        if (end > 0 && end - i < REACH * 10 && text.charAt(end + n) !== "`") {
          flush();
          parent.appendChild(el("code", {}, text.slice(i + n, end).replace(/^ (.*) $/, "$1")));
          i = end + n;
        } else {
          buf += mark;
          i += n;
        }
        continue;
      }
      if (c === "*" || c === "_" || (c === "~" && next === "~")) {
        var delim = next === c ? c + c : c;
        var before = text.charAt(i - 1);
        var after = text.charAt(i + delim.length);
        var opens = after && !/\s/.test(after) && !(c === "_" && /\w/.test(before));
        var stop = opens ? closing(text, delim, i + delim.length) : -1;
        if (stop > 0) {
          flush();
          var tag = c === "~" ? "del" : delim.length === 2 ? "strong" : "em";
          var node = el(tag);
          inline(node, text.slice(i + delim.length, stop), inLink, depth);
          parent.appendChild(node);
          i = stop + delim.length;
        } else {
          buf += delim;
          i += delim.length;
        }
        continue;
      }
      if (c === "[" && !inLink) {
        var mid = text.indexOf("](", i + 1);
        var close = mid > 0 ? text.indexOf(")", mid + 2) : -1;
        if (close > 0 && close - i < REACH * 2 && text.slice(i + 1, mid).indexOf("\n") < 0) {
          flush();
          var label = text.slice(i + 1, mid);
          var href = safeHref(text.slice(mid + 2, close).trim());
          var target = parent;
          if (href) {
            target = el("a", { href: href, rel: "noopener noreferrer", target: "_blank" });
            parent.appendChild(target);
          }
          inline(target, label, true, depth); // a refused link keeps its words, not its address
          i = close + 1;
          continue;
        }
      }
      if (!inLink && (text.startsWith("http", i) || text.startsWith("mailto:", i)) &&
          !/\w/.test(text.charAt(i - 1))) {
        var bare = /^(?:https?:\/\/|mailto:)[^\s<>()]*[^\s<>().,;:!?'"*_~]/.exec(
          text.substr(i, REACH * 2)
        );
        var link = bare && safeHref(bare[0]);
        if (link) {
          flush();
          parent.appendChild(
            el("a", { href: link, rel: "noopener noreferrer", target: "_blank" }, bare[0])
          );
          i += bare[0].length;
          continue;
        }
      }
      buf += c;
      i += 1;
    }
    flush();
  }

  function startsBlock(line) {
    return FENCE.test(line) || ITEM.test(line) || HEADING.test(line) || QUOTE.test(line) ||
      RULE.test(line);
  }

  function list(parent, lines, i) {
    var items = [];
    while (i < lines.length) {
      var m = ITEM.exec(lines[i]);
      if (m) {
        items.push({ indent: m[1].length, marker: m[2], text: m[3] });
      } else if (items.length && /^\s+\S/.test(lines[i]) && !FENCE.test(lines[i])) {
        items[items.length - 1].text += "\n" + lines[i].trim();
      } else {
        break;
      }
      i += 1;
    }
    var stack = [];
    items.forEach(function (item) {
      var ordered = /\d/.test(item.marker);
      while (stack.length && item.indent < stack[stack.length - 1].indent) stack.pop();
      var top = stack[stack.length - 1];
      if (top && item.indent === top.indent && top.ordered !== ordered) {
        stack.pop();
        top = stack[stack.length - 1];
      }
      if (!top || item.indent > top.indent) {
        var node = el(ordered ? "ol" : "ul");
        var start = parseInt(item.marker, 10);
        if (ordered && start !== 1) node.setAttribute("start", String(start));
        (top ? top.li : parent).appendChild(node);
        top = { indent: item.indent, ordered: ordered, list: node, li: null };
        stack.push(top);
      }
      top.li = el("li");
      inline(top.li, item.text);
      top.list.appendChild(top.li);
    });
    return i;
  }

  function blocks(parent, text, depth) {
    depth = (depth || 0) + 1;
    var lines = text.split("\n");
    var i = 0;
    while (i < lines.length) {
      var line = lines[i];
      var fence = FENCE.exec(line);
      var m;
      if (fence) {
        var body = [];
        var mark = fence[1];
        for (i += 1; i < lines.length && !closesFence(lines[i], mark); i += 1) {
          body.push(lines[i]);
        }
        i += 1;
        var pre = el("pre", { tabindex: "0" });
        pre.appendChild(el("code", {}, body.join("\n")));
        parent.appendChild(pre);
      } else if (!line.trim()) {
        i += 1;
      } else if (RULE.test(line)) {
        parent.appendChild(el("hr"));
        i += 1;
      } else if (ITEM.test(line) && ITEM.exec(line)[1].length < 4) {
        i = list(parent, lines, i);
      } else if ((m = HEADING.exec(line))) {
        var heading = el("p");
        var strong = el("strong");
        inline(strong, m[1]);
        heading.appendChild(strong);
        parent.appendChild(heading);
        i += 1;
      } else if (QUOTE.test(line) && depth < DEEP) {
        var quoted = [];
        while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
          quoted.push(m[1]);
          i += 1;
        }
        var quote = el("blockquote");
        blocks(quote, quoted.join("\n"), depth);
        parent.appendChild(quote);
      } else {
        var para = [line];
        for (i += 1; i < lines.length && lines[i].trim() && !startsBlock(lines[i]); i += 1) {
          para.push(lines[i]);
        }
        var p = el("p");
        var joined = para.join("\n");
        if (joined.length > PLAIN) p.textContent = joined;
        else inline(p, joined);
        parent.appendChild(p);
      }
    }
  }

  /* Renders a growing text into `node`: blocks followed by a blank line (outside a code
   * fence) are final and drawn once; only the last, open block is drawn again. */
  function Markdown(node) {
    this.node = node;
    this.reset("");
  }

  Markdown.prototype.reset = function (text) {
    this.node.textContent = "";
    this.text = text;
    this.fixed = 0; // text before this offset is drawn for good
    this.cut = 0; // the last blank line outside a fence seen so far
    this.scanned = 0; // complete lines read up to here
    this.fence = "";
    this.tail = [];
  };

  Markdown.prototype.append = function (delta) {
    this.text += delta;
  };

  Markdown.prototype.set = function (text) {
    if (text !== this.text) this.reset(text);
  };

  Markdown.prototype.draw = function () {
    var text = this.text;
    for (var nl = text.indexOf("\n", this.scanned); nl >= 0; nl = text.indexOf("\n", this.scanned)) {
      var line = text.slice(this.scanned, nl);
      var fence = FENCE.exec(line);
      if (this.fence) {
        if (closesFence(line, this.fence)) this.fence = "";
      } else if (fence) {
        this.fence = fence[1];
      } else if (!line.trim()) {
        this.cut = nl + 1;
      }
      this.scanned = nl + 1;
    }
    var node = this.node;
    this.tail.forEach(function (child) {
      node.removeChild(child);
    });
    if (this.cut > this.fixed) {
      blocks(node, text.slice(this.fixed, this.cut));
      this.fixed = this.cut;
    }
    var first = node.childNodes.length;
    blocks(node, text.slice(this.fixed));
    this.tail = Array.prototype.slice.call(node.childNodes, first);
  };

  /* ---- Errors ---- */

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
    var name = CODES[code];
    if (!name) {
      if (resp.status === 429) name = "rateLimited";
      else if (resp.status === 403) name = "sessionInvalid";
      else if (resp.status === 401) name = "notConfigured";
      else if (resp.status >= 500) name = "unavailable";
      else name = "refused";
    }
    if (name === "rateLimited" && !retry) name = "rateLimitedSoon";
    var text = t(name, { wait: duration(retry), status: resp.status });
    return new ChatError(text, resp.status, code, retry);
  }

  function networkError() {
    return new ChatError(t("network"));
  }

  /* ---- Proof of possession (RFC 9449): a key that never leaves this page ---- */

  /* A P-256 key pair made with WebCrypto, its private half not extractable, kept in
   * memory only (lost on reload, with the token). The token the gateway issues for a
   * request with a proof is bound to this key: every use and renewal of it signs a fresh
   * proof, so a token copied out of the page is useless without the key. Without
   * WebCrypto the widget sends no proof and the token is bound to the network instead. */
  function ProofKey() {
    this.pair = null;
    this.jwk = null;
    this.making = null;
    this.offset = 0; // the gateway's clock minus this one, ms (from its Date header)
    this.nonce = null; // the gateway's latest DPoP-Nonce, once it handed one out
  }

  function b64url(bytes) {
    var text = "";
    for (var i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function b64json(value) {
    return b64url(new TextEncoder().encode(JSON.stringify(value)));
  }

  /* True once the key pair exists; false when this browser cannot make one. */
  ProofKey.prototype.ready = function () {
    var self = this;
    if (!this.making) {
      this.making = (async function () {
        var subtle = window.crypto && window.crypto.subtle;
        if (!subtle || !window.isSecureContext) return false;
        try {
          var pair = await subtle.generateKey(
            { name: "ECDSA", namedCurve: "P-256" }, false, ["sign"]
          );
          var full = await subtle.exportKey("jwk", pair.publicKey);
          self.jwk = { crv: full.crv, kty: full.kty, x: full.x, y: full.y };
          self.pair = pair;
          return true;
        } catch (err) {
          return false;
        }
      })();
    }
    return this.making;
  };

  /* The DPoP header's value for `method url` (with `ath` when a token is presented),
   * or null without a key. */
  ProofKey.prototype.proof = async function (method, url, token) {
    if (!(await this.ready())) return null;
    var subtle = window.crypto.subtle;
    var target = new URL(url, document.baseURI);
    var claims = {
      jti: b64url(window.crypto.getRandomValues(new Uint8Array(16))),
      htm: method,
      htu: target.origin + target.pathname,
      iat: Math.floor((Date.now() + this.offset) / 1000),
    };
    if (this.nonce) claims.nonce = this.nonce;
    if (token) {
      var digest = await subtle.digest("SHA-256", new TextEncoder().encode(token));
      claims.ath = b64url(new Uint8Array(digest));
    }
    var input = b64json({ typ: "dpop+jwt", alg: "ES256", jwk: this.jwk }) + "." + b64json(claims);
    var signature = await subtle.sign(
      { name: "ECDSA", hash: "SHA-256" }, this.pair.privateKey, new TextEncoder().encode(input)
    );
    return input + "." + b64url(new Uint8Array(signature));
  };

  /* The gateway's clock, from its answer's Date header: true when this page's clock
   * turns out to be off by more than a few seconds from what was assumed. */
  ProofKey.prototype.learn = function (resp) {
    var date = Date.parse(resp.headers.get("Date") || "");
    if (isNaN(date)) return false;
    var offset = date - Date.now();
    var moved = Math.abs(offset - this.offset) > 5000;
    if (moved) this.offset = offset;
    return moved;
  };

  /* fetch() with a proof for `url` (and `token`, when one is presented); once more when
   * the gateway refused it and its clock says the visitor's is off (proofs carry the
   * time they were made: a wrong clock makes them look stale or early), or it handed
   * out a DPoP-Nonce (its own time: every later proof carries the latest one). */
  ProofKey.prototype.fetch = async function (url, init, token) {
    var method = init.method || "GET";
    for (var attempt = 0; ; attempt++) {
      var headers = Object.assign({}, init.headers);
      var proof = await this.proof(method, url, token);
      if (proof) headers.DPoP = proof;
      var resp = await fetch(url, Object.assign({}, init, { headers: headers }));
      var skewed = this.learn(resp);
      var given = resp.headers.get("DPoP-Nonce");
      if (given) this.nonce = given;
      if (resp.status !== 401 || !proof || attempt || !(skewed || given)) return resp;
    }
  };

  /* ---- Client tokens: every token the widget holds is obtained here ---- */

  /* One request at a time, kept in memory only. A token is renewed for the same
   * conversation (rotation: the old one is retired); a new conversation starts only when
   * there is none yet or the old token can no longer be renewed. `onNew` runs when a
   * token for a new conversation replaces another; `wanted()` says whether to renew ahead
   * of use. */
  function Tokens(options, onNew, onError, wanted) {
    this.options = options;
    this.onNew = onNew;
    this.onError = onError;
    this.wanted = wanted;
    this.token = null;
    this.expiresAt = 0;
    this.ttl = 0;
    this.pending = null;
    this.timer = 0;
    this.stale = false;
    this.key = new ProofKey();
  }

  /* A token valid for at least the renewal margin. */
  Tokens.prototype.get = function () {
    if (this.token && !this.stale && Date.now() < this.expiresAt - this.margin()) {
      return Promise.resolve(this.token);
    }
    return this.renew();
  };

  /* Renew this long before expiry: a tenth of the lifetime, 5 s to 60 s, never more
   * than a third of it. */
  Tokens.prototype.margin = function () {
    return Math.min(60, Math.max(5, this.ttl * 0.1), this.ttl / 3) * 1000;
  };

  Tokens.prototype.renew = function () {
    var self = this;
    if (this.pending) return this.pending;
    this.pending = (async function () {
      if (self.token && (await self.refresh())) return self.token;
      return self.issue();
    })();
    this.pending.then(
      function () { self.pending = null; },
      function () { self.pending = null; }
    );
    return this.pending;
  };

  /* A token for a new conversation, from the public key. */
  Tokens.prototype.issue = async function () {
    var opts = this.options;
    var url = opts.gateway + TOKEN_PATH + encodeURIComponent(opts.model);
    var resp;
    try {
      resp = await this.key.fetch(url, {
        headers: { Authorization: "Bearer " + opts.key },
        credentials: "omit",
        cache: "no-store",
      });
    } catch (err) {
      throw networkError();
    }
    if (!resp.ok) throw await refusal(resp);
    this.accept(await resp.json());
    this.onNew();
    return this.token;
  };

  /* The same conversation under a new token: true when renewed, false when the token is
   * past renewal (expired beyond the grace, or no longer readable) so a new conversation
   * must start; throws when the conversation ended or the gateway could not answer. */
  Tokens.prototype.refresh = async function () {
    var url = this.options.gateway + REFRESH_PATH;
    var resp;
    for (var attempt = 0; !resp; attempt++) {
      try {
        resp = await this.key.fetch(url, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ client_token: this.token }),
          credentials: "omit",
          cache: "no-store",
        }, this.token);
      } catch (err) {
        // The answer may be lost after the gateway rotated the token: asked again within
        // the rotation overlap (10 s by default) the same successor comes back, while
        // later the old token would be taken for a stolen copy.
        if (attempt >= REFRESH_RETRIES_MS.length) throw networkError();
        await new Promise(function (done) { setTimeout(done, REFRESH_RETRIES_MS[attempt]); });
      }
    }
    if (resp.ok) {
      this.accept(await resp.json());
      return true;
    }
    var err = await refusal(resp);
    if (err.code === "token_expired" || err.code === "token_invalid") return false;
    if (ENDED[err.code]) this.forget();
    throw err;
  };

  Tokens.prototype.accept = function (body) {
    this.token = body.token;
    // expires_in is relative, so a visitor's wrong clock does not matter
    this.ttl = Number(body.expires_in) || 60;
    this.expiresAt = Date.now() + this.ttl * 1000;
    this.stale = false;
    this.schedule();
  };

  /* The conversation cannot go on: the next token starts a new one. */
  Tokens.prototype.forget = function () {
    this.token = null;
    this.stale = true;
    clearTimeout(this.timer);
  };

  /* Renew before expiry while the chat is in use; otherwise on next use. */
  Tokens.prototype.schedule = function () {
    var self = this;
    clearTimeout(this.timer);
    var wait = Math.max(0, this.expiresAt - this.margin() - Date.now());
    this.timer = setTimeout(function () {
      self.stale = true;
      if (self.wanted()) self.renew().catch(self.onError);
    }, wait);
  };

  /* ---- Server-sent events ---- */

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
      var start = 0;
      var re = /\r\n|\r|\n/g;
      var match;
      while ((match = re.exec(buffer))) {
        if (match[0] === "\r" && match.index === buffer.length - 1) break; // maybe \r\n
        line(buffer.slice(start, match.index));
        start = match.index + match[0].length;
      }
      buffer = buffer.slice(start);
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

  /* ---- The chat ---- */

  function Chat(options) {
    var self = this;
    this.options = options;
    this.sent = false;
    this.busy = false;
    this.edits = 0; // bumped by every message added, so a late history load cannot wipe it
    this.blockedUntil = 0;
    this.tokens = new Tokens(
      options,
      function () {
        if (self.sent) self.note(t("newConversation"));
        self.sent = false;
        self.clearError();
      },
      function (err) { self.showError(err); },
      function () { return self.isOpen() && !document.hidden; }
    );
    this.render();
  }

  Chat.prototype.render = function () {
    var self = this;
    var opts = this.options;
    var host = el("div", { "data-agent-gateway-chat": "" });
    var target = opts.target ? document.querySelector(opts.target) : null;
    (target || document.body).appendChild(host);
    var root = host.attachShadow({ mode: "open" });
    this.root = root;
    if (root.adoptedStyleSheets !== undefined && typeof CSSStyleSheet === "function") {
      var sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS); // constructable: not subject to the page's style-src CSP
      root.adoptedStyleSheets = [sheet];
    } else {
      root.appendChild(el("style", {}, CSS));
    }
    var frame = el("div", { class: "w", lang: LOCALE.lang });
    root.appendChild(frame);
    var panel = el("section", {
      id: "agc-panel",
      class: "panel " + (target ? "inline" : "floating"),
      role: "dialog",
      "aria-label": opts.title,
      tabindex: "-1",
    });
    var header = el("header");
    header.appendChild(el("h2", {}, opts.title));
    this.reloadButton = el("button", {
      type: "button",
      class: "reload",
      title: t("reload"),
      "aria-label": t("reload"),
    }, "\u21bb");
    header.appendChild(this.reloadButton);
    this.log = el("div", { class: "log", role: "region", "aria-label": t("log"), tabindex: "0" });
    // the finished answer is read out once, from here, not each piece as it is written
    this.announcer = el("div", { class: "sr", role: "status", "aria-live": "polite" });
    this.status = el("div", { class: "status", role: "alert" });
    this.status.hidden = true;
    var form = el("form");
    this.input = el("textarea", {
      rows: "1",
      placeholder: opts.placeholder,
      "aria-label": t("input"),
      maxlength: "8000",
    });
    this.sendButton = el("button", { type: "submit", class: "send" }, t("send"));
    form.appendChild(this.input);
    form.appendChild(this.sendButton);
    [header, this.log, this.announcer, this.status, form].forEach(function (child) {
      panel.appendChild(child);
    });
    frame.appendChild(panel);
    this.panel = panel;

    if (!target) {
      this.launcher = el("button", {
        type: "button",
        class: "launcher",
        "aria-expanded": "false",
        "aria-controls": "agc-panel",
      }, opts.title);
      frame.insertBefore(this.launcher, panel);
      panel.hidden = true;
      var close = el("button", {
        type: "button",
        class: "close",
        title: t("close"),
        "aria-label": t("close"),
      }, "\u2715");
      header.appendChild(close);
      close.addEventListener("click", function () { self.close(); });
      this.launcher.addEventListener("click", function () {
        if (panel.hidden) self.open(true);
        else self.close();
      });
      panel.addEventListener("keydown", function (event) {
        if (event.key === "Escape" && !event.isComposing) {
          event.preventDefault();
          self.close();
        }
      });
    }
    this.reloadButton.addEventListener("click", function () {
      if (self.busy) return; // never under an answer being written
      if (self.tokens.stale || !self.tokens.token) {
        self.open(true);
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
      if (!document.hidden && self.isOpen() && self.tokens.stale) {
        self.tokens.renew().catch(function (err) { self.showError(err); });
      }
    });
  };

  Chat.prototype.isOpen = function () {
    return !this.panel.hidden;
  };

  /* `focus`: opened by the visitor or the page's script (not at load), so focus moves in. */
  Chat.prototype.open = async function (focus) {
    this.panel.hidden = false;
    if (this.launcher) this.launcher.setAttribute("aria-expanded", "true");
    if (focus) this.panel.focus();
    if (this.busy) return;
    this.setBusy(true); // nothing is sent before the conversation is loaded
    try {
      await this.tokens.get();
      await this.loadHistory();
    } catch (err) {
      this.showError(err);
    } finally {
      this.setBusy(false);
    }
    if (focus && this.isOpen() && this.root.activeElement === this.panel) this.input.focus();
  };

  Chat.prototype.close = function () {
    this.panel.hidden = true;
    if (this.launcher) {
      this.launcher.setAttribute("aria-expanded", "false");
      this.launcher.focus();
    }
  };

  Chat.prototype.loadHistory = async function () {
    var edits = this.edits;
    var token = await this.tokens.get();
    var url = this.options.gateway + MESSAGES_PATH + encodeURIComponent(token);
    var resp;
    try {
      resp = await this.tokens.key.fetch(url, { credentials: "omit", cache: "no-store" }, token);
    } catch (err) {
      throw networkError();
    }
    if (resp.status === 404) {
      var problem = await resp.json().catch(function () { return {}; });
      if (problem.code === "conversation_not_found") {
        if (edits === this.edits) this.replaceLog([]); // nothing said yet
        return;
      }
      throw new ChatError(t("notLoaded"), 404, problem.code);
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
        var node = self.bubble(message.role);
        var text = String(message.content || "");
        if (message.role === "user") node.textContent = text;
        else self.markdown(node, text);
      }
    });
    this.sent = messages.length > 0;
  };

  Chat.prototype.bubble = function (role) {
    var node = el("div", { class: "msg " + role, "data-role": role });
    this.log.appendChild(node);
    this.scroll();
    return node;
  };

  Chat.prototype.markdown = function (node, text) {
    var md = new Markdown(node);
    md.set(text);
    md.draw();
    return md;
  };

  Chat.prototype.scroll = function () {
    this.log.scrollTop = this.log.scrollHeight;
  };

  Chat.prototype.note = function (text) {
    this.log.appendChild(el("div", { class: "note" }, text));
  };

  /* Reads the answer as shown (its words, not its Markdown marks), once. */
  Chat.prototype.announce = function (node) {
    var text = node.innerText || node.textContent;
    var short = text.length > 1500 ? text.slice(0, 1500) + "\u2026" : text;
    this.announcer.textContent = t("said", { text: short });
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
      var token = await this.tokens.get();
      this.input.value = "";
      this.edits += 1;
      this.bubble("user").textContent = text; // as typed: the visitor's own words
      answer = this.bubble("assistant");
      answer.setAttribute("data-state", "streaming");
      answer.setAttribute("aria-busy", "true");
      var resp = await this.post(token, text);
      if (resp.status === 403) {
        var problem = await resp.clone().json().catch(function () { return {}; });
        if (problem.code === "token_expired") {
          // the token died in transit (e.g. a laptop asleep): once more with a new one
          this.tokens.stale = true;
          resp = await this.post(await this.tokens.get(), text);
        }
      }
      if (!resp.ok) throw await refusal(resp);
      this.sent = true;
      var md = new Markdown(answer);
      if ((resp.headers.get("Content-Type") || "").indexOf("text/event-stream") === 0) {
        await this.readStream(resp, md);
      } else {
        var body = await resp.json();
        md.set((body.message && body.message.content) || "");
        md.draw();
      }
      answer.setAttribute("data-state", "done");
      this.announce(answer);
    } catch (err) {
      if (answer && !answer.textContent) answer.remove();
      else if (answer) answer.setAttribute("data-state", "failed");
      if (!answer) this.input.value = text;
      this.showError(err);
    } finally {
      if (answer) answer.removeAttribute("aria-busy");
      this.setBusy(false);
    }
  };

  Chat.prototype.post = async function (token, text) {
    var url = this.options.gateway + SEND_PATH;
    try {
      return await this.tokens.key.fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({ client_token: token, message: text, stream: true }),
        credentials: "omit",
        cache: "no-store",
      }, token);
    } catch (err) {
      throw networkError();
    }
  };

  /* Reads the answer's events; the text is drawn again after each network read. */
  Chat.prototype.readStream = async function (resp, md) {
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
        failure = new ChatError(t("interrupted"), 502, payload.code || "");
      } else if (event.event === "done") {
        finished = true;
        if (payload.message && typeof payload.message.content === "string") {
          md.set(payload.message.content);
        }
      } else {
        md.append(deltaOf(payload));
      }
    });
    var reader = resp.body.getReader();
    var decoder = new TextDecoder();
    try {
      for (;;) {
        var step = await reader.read();
        if (step.done) break;
        parser.push(decoder.decode(step.value, { stream: true }));
        md.draw();
        this.scroll();
      }
    } catch (err) {
      if (!finished) {
        md.draw();
        throw new ChatError(t("interrupted"));
      }
    }
    parser.push(decoder.decode());
    parser.end();
    md.draw();
    this.scroll();
    if (failure) throw failure;
  };

  Chat.prototype.showError = function (err) {
    var self = this;
    var message = err instanceof ChatError ? err.message : t("unknown");
    this.status.textContent = message;
    this.status.hidden = false;
    this.status.setAttribute("data-status", String(err.status || 0));
    this.status.setAttribute("data-code", err.code || "");
    if (ENDED[err.code]) this.tokens.forget();
    else if (err.status === 403 && err.code !== "origin_not_allowed") this.tokens.stale = true;
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
    title: data.title || t("title"),
    placeholder: data.placeholder || t("placeholder"),
    target: data.target || "",
  };
  var api = (window.AgentGatewayChat = window.AgentGatewayChat || []);

  function start() {
    var chat = new Chat(options);
    api.push({
      open: function () { return chat.open(true); },
      close: function () { chat.close(); },
      reload: function () { return chat.loadHistory(); },
    });
    if (data.open === "true" || options.target) chat.open(false);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
