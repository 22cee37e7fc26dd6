/*
 * Text that one party takes from a program it does not control (a container's log, a health
 * check's output) and passes on to others: a journal, an answer, an event, a terminal.
 */

const ESC = 0x1b;
const BEL = 0x07;

/** Control characters (Unicode Cc) and the bidirectional overrides and isolates, which reorder what is shown. */
const CONTROLS = /[\p{Cc}\u202a-\u202e\u2066-\u2069]/u;

/**
 * `text` as one plain line: terminal escape sequences removed whole (colours, cursor moves, window
 * titles), line breaks and tabs turned into spaces, every other control character and the
 * bidirectional overrides dropped, and at most `maxChars` characters (a longer one ends in "…").
 */
export function plainLine(text: string, maxChars = Number.MAX_SAFE_INTEGER): string {
  let out = '';
  if (!CONTROLS.test(text)) {
    out = text;
  } else {
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c === ESC) i = escapeSequenceEnd(text, i);
      else if (c === 0x09 || c === 0x0a || c === 0x0b || c === 0x0c || c === 0x85) out += ' ';
      else if (!CONTROLS.test(text[i] ?? '')) out += text[i];
    }
  }
  out = out.replace(/[\u2028\u2029]/g, ' ');
  if (out.length <= maxChars) return out;
  // Not in the middle of a surrogate pair: half a character is not text.
  const cut = /[\ud800-\udbff]/.test(out[maxChars - 2] ?? '') ? maxChars - 2 : maxChars - 1;
  return `${out.slice(0, cut)}…`;
}

/**
 * The index of the last character of the escape sequence starting at `at` (an ESC), per ECMA-48:
 * CSI parameters, intermediates and a final byte; OSC, DCS, SOS, PM and APC strings up to BEL or
 * ST (or the end of the text); otherwise intermediates and one final byte. A malformed sequence
 * ends before the character that breaks it, which is then kept (or dropped) on its own.
 */
export function escapeSequenceEnd(text: string, at: number): number {
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
