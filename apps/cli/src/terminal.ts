/*
 * What the CLI prints comes partly from elsewhere: a receiver's or the registry's error messages,
 * a container's log lines, host names and labels a receiver registered, events from NATS. Any of
 * them may hold terminal control sequences that recolour, move the cursor over earlier lines,
 * retitle the window or write to the clipboard. These functions make such text inert before it
 * reaches a terminal.
 */

const TAB = 0x09;
const LF = 0x0a;
const ESC = 0x1b;
const BEL = 0x07;

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
      i = sequenceEnd(text, i);
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

/**
 * The index of the last character of the escape sequence starting at `at` (an ESC), per ECMA-48:
 * CSI parameters, intermediates and a final byte; OSC, DCS, SOS, PM and APC strings up to BEL or
 * ST (or the end of the text); otherwise intermediates and one final byte. A malformed sequence
 * ends before the character that breaks it, which is then printed (or dropped) on its own.
 */
function sequenceEnd(text: string, at: number): number {
  let i = at + 1;
  const kind = text[i];
  if (kind === '[') {
    i++;
    while (i < text.length && inRange(text, i, 0x30, 0x3f)) i++;
    while (i < text.length && inRange(text, i, 0x20, 0x2f)) i++;
    return inRange(text, i, 0x40, 0x7e) ? i : i - 1;
  }
  if (kind === ']' || kind === 'P' || kind === 'X' || kind === '^' || kind === '_') {
    for (i++; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c === BEL) return i;
      if (c === ESC) return text[i + 1] === '\\' ? i + 1 : i - 1;
    }
    return text.length - 1;
  }
  while (i < text.length && inRange(text, i, 0x20, 0x2f)) i++;
  return inRange(text, i, 0x30, 0x7e) ? i : i - 1;
}

function inRange(text: string, i: number, low: number, high: number): boolean {
  const c = text.charCodeAt(i);
  return c >= low && c <= high;
}
