/*
 * What the CLI prints comes partly from elsewhere: a receiver's or the registry's error messages,
 * a container's log lines, host names and labels a receiver registered, events from NATS. Any of
 * them may hold terminal control sequences that recolour, move the cursor over earlier lines,
 * retitle the window or write to the clipboard. These functions make such text inert before it
 * reaches a terminal.
 */

import { escapeSequenceEnd } from '@ferry/protocol';

const TAB = 0x09;
const LF = 0x0a;
const ESC = 0x1b;

/** Anything {@link printable} changes: a control character or a bidirectional override or isolate. */
const SUSPECT = /[\p{Cc}\u202a-\u202e\u2066-\u2069]/u;

/**
 * `text` as it may reach a terminal: ESC sequences (CSI, OSC, DCS and the other strings, two-byte
 * escapes) and other C0 controls removed, line feeds and tabs kept (CRLF becomes LF); DEL, the C1
 * controls (some terminals take U+009B as CSI) and the bidirectional overrides and isolates (they
 * reorder what is shown) spelled `\uXXXX` instead. Those are spelled rather than dropped because a
 * JSON text holds them inside strings, where that escape means the same character: a JSON line
 * stays the same JSON value (its strings never hold a raw C0 control).
 */
export function printable(text: string): string {
  if (!SUSPECT.test(text)) return text;
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === ESC) {
      i = escapeSequenceEnd(text, i);
    } else if (c === TAB || c === LF) {
      out += text[i];
    } else if (c < 0x20) {
      // CR included: alone it returns to the line's start and lets what follows overwrite it.
    } else if ((c >= 0x7f && c <= 0x9f) || (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069)) {
      out += `\\u${c.toString(16).padStart(4, '0')}`;
    } else {
      out += text[i];
    }
  }
  return out;
}

/** Like {@link printable}, on one line: line breaks and tabs become spaces (table cells, log lines, names). */
export function oneLine(text: string): string {
  return printable(text.replace(/\r\n|[\r\n\t\v\f\u2028\u2029\x85]/g, ' '));
}
