/* lstrpat: string.find, string.match, string.gmatch and string.gsub with Lua 5.4 semantics (manual
 * §6.4, §6.4.1) and bounded work. Owns the pattern matcher, the literal fast paths and the budget
 * parameters; see lstrpat.h for why.
 *
 * The matcher is a backtracking one, as Lua's semantics require: what a pattern returns (which of
 * several possible matches, what the captures hold) and which malformed-pattern errors are raised
 * (only those the matcher actually reaches, like stock Lua) both follow from the order in which it
 * tries things. So it walks the pattern text directly, in the manual's order: greedy items try the
 * longest run first, lazy ones the shortest, '?' the one-character match first. Every bit of work
 * is charged to a per-call step budget; C recursion is limited to 200 nested matcher calls like
 * stock Lua's MAXCCALLS, with the same "pattern too complex" error.
 *
 * Lua strings always end with a '\0' just past their length, and the code below relies on it where
 * stock does (peeking one character past an item whose pattern may end there). */
#define _GNU_SOURCE /* memmem */
#include <ctype.h>
#include <limits.h>
#include <stddef.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lstrpat.h"

#define PAT_MAXCAPTURES 32 /* LUA_MAXCAPTURES of stock lstrlib */
#define PAT_MAXDEPTH 200   /* MAXCCALLS of stock lstrlib: nested matcher calls */
#define PAT_SHOWN 40       /* pattern characters quoted in the budget error */

/* capture lengths that are not lengths */
#define CAP_OPEN (-1)     /* '(' seen, ')' not yet */
#define CAP_POSITION (-2) /* a "()" capture: only its position counts */

static long g_base_steps = SG_PAT_BASE_STEPS;
static long g_steps_per_byte = SG_PAT_STEPS_PER_BYTE;

void sg_strpat_set_limits(long base, long per_byte) {
  g_base_steps = base < 0 ? SG_PAT_BASE_STEPS : base;
  g_steps_per_byte = per_byte < 0 ? SG_PAT_STEPS_PER_BYTE : per_byte;
}

/* One capture of the match in progress. */
struct capture {
  const char *at; /* where it starts in the subject */
  ptrdiff_t len;  /* its length once closed, else CAP_OPEN or CAP_POSITION */
};

/* Everything one call (or one gmatch iterator call) matches with. */
struct run {
  lua_State *L;               /* raises errors, receives results */
  const char *fname;          /* "string.find"..., named in the budget error */
  const char *subj;           /* the subject */
  const char *subj_end;       /* one past its last byte (a '\0' is there) */
  const char *pat;            /* the whole pattern as given, for the budget error */
  size_t pat_len;             /* its length */
  const char *pat_end;        /* one past the pattern's last byte (a '\0' is there) */
  long budget;                /* steps this call may take, for the error message */
  long left;                  /* steps still allowed; raising when it goes negative */
  int depth;                  /* nested matcher calls still allowed */
  int ncap;                   /* captures opened so far (closed or not) */
  struct capture cap[PAT_MAXCAPTURES]; /* the captures, in order of their '(' */
};

/* ---- errors ---- */

/* Pushes "file:line: " of the innermost Lua function on the stack, or "" if there is none: the
 * script line that called us, even through pcall(string.find, ...) or a C callback. */
static void push_lua_where(lua_State *L) {
  lua_Debug ar;
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
      lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
      return;
    }
  }
  lua_pushliteral(L, "");
}

/* Raises "where: msg" with the script's position (a C-function caller would give none). */
static int raise_at_script(lua_State *L, const char *msg) {
  luaL_checkstack(L, 3, NULL);
  push_lua_where(L);
  lua_pushstring(L, msg);
  lua_concat(L, 2);
  return lua_error(L);
}

/* Raises the budget error: it names the function, the sizes and the pattern so that a script
 * author can find the call, and says what usually causes it. */
static void out_of_budget(struct run *r) {
  /* the pattern may hold any bytes: quote the first PAT_SHOWN with C-style escapes */
  char shown[PAT_SHOWN * 4 + 4];
  size_t k = 0, n = r->pat_len < PAT_SHOWN ? r->pat_len : PAT_SHOWN;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)r->pat[i];
    if (c == '"' || c == '\\') {
      shown[k++] = '\\';
      shown[k++] = (char)c;
    } else if (c >= 0x20 && c < 0x7f) {
      shown[k++] = (char)c;
    } else {
      shown[k++] = '\\';
      shown[k++] = (char)('0' + c / 100);
      shown[k++] = (char)('0' + c / 10 % 10);
      shown[k++] = (char)('0' + c % 10);
    }
  }
  if (n < r->pat_len) shown[k++] = '.', shown[k++] = '.', shown[k++] = '.';
  shown[k] = '\0';
  luaL_checkstack(r->L, 4, NULL);
  push_lua_where(r->L);
  lua_pushfstring(r->L,
                  "%s: pattern too complex: gave up after %I steps on a %I-byte subject (pattern \"%s\"; "
                  "every '*', '+' or '-' that can backtrack multiplies the work)",
                  r->fname, (lua_Integer)r->budget, (lua_Integer)(r->subj_end - r->subj), shown);
  lua_concat(r->L, 2);
  lua_error(r->L);
}

/* Every unit of matcher work is charged here: the one place where a call can be stopped. */
static inline void charge(struct run *r, long n) {
  r->left -= n;
  if (r->left < 0) out_of_budget(r);
}

/* The budget comes from the limits in force when the call starts. */
static void run_init(struct run *r, lua_State *L, const char *fname, const char *s, size_t ls,
                     const char *pat, size_t lpat) {
  r->L = L;
  r->fname = fname;
  r->subj = s;
  r->subj_end = s + ls;
  r->pat = pat;
  r->pat_len = lpat;
  r->pat_end = pat + lpat;
  long base = g_base_steps, per = g_steps_per_byte;
  if (per > 0 && ls > (size_t)(LONG_MAX - base) / (size_t)per) r->budget = LONG_MAX;
  else r->budget = base + per * (long)ls;
  r->left = r->budget;
  r->depth = PAT_MAXDEPTH;
  r->ncap = 0;
}

/* Before each attempt at a new subject position: no captures, full depth (the budget goes on). */
static inline void run_restart(struct run *r) {
  r->ncap = 0;
  r->depth = PAT_MAXDEPTH;
}

/* ---- single items ---- */

/* Does c belong to the class letter cl (%a...%x, upper case = complement)? Any other character
 * stands for itself, as the manual says for %x with x non-alphanumeric. %z (the zero byte) is no
 * longer in the manual but stock 5.4 still has it, so scripts may rely on it. */
static int class_has(int c, int cl) {
  int in;
  switch (tolower(cl)) {
    case 'a': in = isalpha(c); break;
    case 'c': in = iscntrl(c); break;
    case 'd': in = isdigit(c); break;
    case 'g': in = isgraph(c); break;
    case 'l': in = islower(c); break;
    case 'p': in = ispunct(c); break;
    case 's': in = isspace(c); break;
    case 'u': in = isupper(c); break;
    case 'w': in = isalnum(c); break;
    case 'x': in = isxdigit(c); break;
    case 'z': in = c == 0; break;
    default: return cl == c;
  }
  return isupper(cl) ? !in : in != 0;
}

/* Does c belong to the set that opens at p ('[') and closes at close (its ']')? */
static int set_has(int c, const char *p, const char *close) {
  int yes = 1;
  p++;
  if (*p == '^') {
    yes = 0;
    p++;
  }
  for (; p < close; p++) {
    if (*p == '%') {
      p++;
      if (class_has(c, (unsigned char)*p)) return yes;
    } else if (p[1] == '-' && p + 2 < close) {
      /* a '-' first or last in the set, or right after a %class, is a plain '-' */
      if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2]) return yes;
      p += 2;
    } else if ((unsigned char)*p == c) {
      return yes;
    }
  }
  return !yes;
}

/* End of the single item (character, '.', %class or set) starting at p: where a quantifier would
 * be. Raises on a malformed item, only when the matcher gets this far (as stock does). */
static const char *item_end(struct run *r, const char *p) {
  const char *start = p;
  char c = *p++;
  if (c == '%') {
    if (p == r->pat_end) luaL_error(r->L, "malformed pattern (ends with '%%')");
    return p + 1;
  }
  if (c == '[') {
    if (*p == '^') p++;
    /* the first character is never the closing ']', so "[]]" and "[^]]" hold a ']' */
    do {
      if (p == r->pat_end) luaL_error(r->L, "malformed pattern (missing ']')");
      char d = *p++;
      if (d == '%' && p < r->pat_end) p++; /* "%]" is not the end */
    } while (*p != ']');
    charge(r, (p - start) >> 3); /* a long set costs more than one step to skip */
    return p + 1;
  }
  return p;
}

/* Does the item [p, ep) match the subject character at s (none at the end)? */
static int item_matches(struct run *r, const char *s, const char *p, const char *ep) {
  if (s >= r->subj_end) return 0;
  int c = (unsigned char)*s;
  switch (*p) {
    case '.': return 1;
    case '%': return class_has(c, (unsigned char)p[1]);
    case '[':
      charge(r, (ep - p) >> 3); /* a long set costs more than one step to search */
      return set_has(c, p, ep - 1);
    default: return (unsigned char)*p == c;
  }
}

/* ---- the matcher ---- */

static const char *match_here(struct run *r, const char *s, const char *p);

/* item* (and item+ after its first match): the longest run first, then one shorter at a time. */
static const char *match_greedy(struct run *r, const char *s, const char *p, const char *ep) {
  size_t n = 0;
  while (charge(r, 1), item_matches(r, s + n, p, ep)) n++;
  for (;;) {
    const char *e = match_here(r, s + n, ep + 1);
    if (e || n == 0) return e;
    n--;
  }
}

/* item-: the shortest run first, then one longer at a time. */
static const char *match_lazy(struct run *r, const char *s, const char *p, const char *ep) {
  for (;;) {
    const char *e = match_here(r, s, ep + 1);
    if (e) return e;
    charge(r, 1);
    if (!item_matches(r, s, p, ep)) return NULL;
    s++;
  }
}

/* '(' or "()": opens capture number ncap at s and matches the rest; undone if the rest fails. */
static const char *match_open(struct run *r, const char *s, const char *p, ptrdiff_t kind) {
  if (r->ncap >= PAT_MAXCAPTURES) luaL_error(r->L, "too many captures");
  r->cap[r->ncap].at = s;
  r->cap[r->ncap].len = kind;
  r->ncap++;
  const char *e = match_here(r, s, p);
  if (!e) r->ncap--;
  return e;
}

/* ')': closes the innermost open capture at s and matches the rest; reopened if the rest fails. */
static const char *match_close(struct run *r, const char *s, const char *p) {
  int i = r->ncap - 1;
  while (i >= 0 && r->cap[i].len != CAP_OPEN) i--;
  if (i < 0) luaL_error(r->L, "invalid pattern capture");
  r->cap[i].len = s - r->cap[i].at;
  const char *e = match_here(r, s, p);
  if (!e) r->cap[i].len = CAP_OPEN;
  return e;
}

/* %bxy at s (p points at x): end of the balanced run, or NULL. */
static const char *match_balance(struct run *r, const char *s, const char *p) {
  if (p + 1 >= r->pat_end) luaL_error(r->L, "malformed pattern (missing arguments to '%%b')");
  if (s >= r->subj_end || *s != p[0]) return NULL;
  char open = p[0], close = p[1];
  int level = 1;
  while (++s < r->subj_end) {
    charge(r, 1);
    if (*s == close) {
      if (--level == 0) return s + 1;
    } else if (*s == open) {
      level++;
    }
  }
  return NULL;
}

/* %1-%9 at s (digit is the character after '%'): end of the repeated text, or NULL. A position
 * capture repeats nothing and never matches. */
static const char *match_backref(struct run *r, const char *s, char digit) {
  int i = digit - '1';
  if (i < 0 || i >= r->ncap || r->cap[i].len == CAP_OPEN)
    luaL_error(r->L, "invalid capture index %%%d", i + 1);
  ptrdiff_t len = r->cap[i].len;
  if (len < 0 || r->subj_end - s < len) return NULL;
  charge(r, (long)len);
  return memcmp(r->cap[i].at, s, (size_t)len) == 0 ? s + len : NULL;
}

/* Matches the pattern from p against the subject from s: where the match ends, or NULL. Items that
 * cannot backtrack are handled in the loop; only the choices recurse. */
static const char *match_here(struct run *r, const char *s, const char *p) {
  if (r->depth-- == 0) raise_at_script(r->L, "pattern too complex");
  for (;;) {
    charge(r, 1);
    if (p == r->pat_end) break;
    if (*p == '(') {
      s = p[1] == ')' ? match_open(r, s, p + 2, CAP_POSITION) : match_open(r, s, p + 1, CAP_OPEN);
      break;
    }
    if (*p == ')') {
      s = match_close(r, s, p + 1);
      break;
    }
    if (*p == '$' && p + 1 == r->pat_end) { /* anywhere else '$' is a plain character */
      if (s != r->subj_end) s = NULL;
      break;
    }
    if (*p == '%' && p[1] == 'b') {
      s = match_balance(r, s, p + 2);
      if (!s) break;
      p += 4;
      continue;
    }
    if (*p == '%' && p[1] == 'f') {
      p += 2;
      if (*p != '[') luaL_error(r->L, "missing '[' after '%%f' in pattern");
      const char *ep = item_end(r, p);
      /* the frontier's outside is '\0' at both ends of the subject */
      int before = s == r->subj ? 0 : (unsigned char)s[-1];
      int at = s < r->subj_end ? (unsigned char)*s : 0;
      charge(r, (ep - p) >> 2); /* two searches of the set */
      if (set_has(before, p, ep - 1) || !set_has(at, p, ep - 1)) {
        s = NULL;
        break;
      }
      p = ep;
      continue;
    }
    if (*p == '%' && isdigit((unsigned char)p[1])) {
      s = match_backref(r, s, p[1]);
      if (!s) break;
      p += 2;
      continue;
    }
    /* a single item, maybe quantified */
    const char *ep = item_end(r, p);
    char q = *ep; /* ep may be pat_end: then the '\0' after the pattern, no quantifier */
    if (!item_matches(r, s, p, ep)) {
      if (q == '*' || q == '?' || q == '-') { /* zero repetitions are fine */
        p = ep + 1;
        continue;
      }
      s = NULL;
      break;
    }
    if (q == '?') {
      const char *e = match_here(r, s + 1, ep + 1);
      if (e) {
        s = e;
        break;
      }
      p = ep + 1;
      continue;
    }
    if (q == '*' || q == '+') {
      s = match_greedy(r, q == '+' ? s + 1 : s, p, ep);
      break;
    }
    if (q == '-') {
      s = match_lazy(r, s, p, ep);
      break;
    }
    s++;
    p = ep;
  }
  r->depth++;
  return s;
}

/* ---- captures to values ---- */

/* Capture i of a match [s, e): pushes nothing and sets *text for a string capture (returning its
 * length); pushes the position and returns CAP_POSITION for a position capture. With no captures,
 * "capture 1" is the whole match. */
static ptrdiff_t get_capture(struct run *r, int i, const char *s, const char *e, const char **text) {
  if (i >= r->ncap) {
    if (i != 0) luaL_error(r->L, "invalid capture index %%%d", i + 1);
    *text = s;
    return e - s;
  }
  ptrdiff_t len = r->cap[i].len;
  *text = r->cap[i].at;
  if (len == CAP_OPEN) luaL_error(r->L, "unfinished capture");
  if (len == CAP_POSITION) lua_pushinteger(r->L, (r->cap[i].at - r->subj) + 1);
  return len;
}

/* Pushes capture i of the match [s, e) as the value scripts see: a string or a position. */
static void push_capture(struct run *r, int i, const char *s, const char *e) {
  const char *text;
  ptrdiff_t len = get_capture(r, i, s, e, &text);
  if (len != CAP_POSITION) lua_pushlstring(r->L, text, (size_t)len);
}

/* Pushes the captures of the match [s, e), or the whole match if there are none and s is given
 * (find passes NULL: its positions are the whole match). Returns how many. */
static int push_captures(struct run *r, const char *s, const char *e) {
  int n = (r->ncap == 0 && s) ? 1 : r->ncap;
  luaL_checkstack(r->L, n, "too many captures");
  for (int i = 0; i < n; i++) push_capture(r, i, s, e);
  return n;
}

/* ---- literal patterns ---- */

/* The text a pattern matches when it is literal, and where. */
struct literal {
  const char *text; /* the characters to find */
  size_t len;       /* how many (never 0) */
  int at_end;       /* a final '$': the text must end the subject */
};

/* Is c one of the characters that make a pattern more than plain text for stock find? */
static inline int find_special(char c) {
  switch (c) {
    case '^': case '$': case '*': case '+': case '?': case '.': case '(': case '[': case '%': case '-':
      return 1;
    default:
      return 0;
  }
}

/* Does p hold none of them? Then find looks for it as plain text, even if it holds a ')' that would
 * be an error as a pattern. */
static int no_specials(const char *p, size_t lp) {
  for (size_t i = 0; i < lp; i++)
    if (find_special(p[i])) return 0;
  return 1;
}

/* If the pattern body [p, p + lp) (after any '^') only matches one fixed text, fills *lit and
 * returns 1: the caller can use memmem instead of trying the matcher at every position, which is
 * O(n*m). Patterns that could raise an error, or match the empty string, are not literal. Escaped
 * characters are copied into a userdata left on the stack (only then is anything pushed). */
static int as_literal(lua_State *L, const char *p, size_t lp, struct literal *lit) {
  const char *end = p + lp;
  size_t n = 0;
  int escapes = 0;
  lit->at_end = 0;
  for (const char *q = p; q < end;) {
    switch (*q) {
      case '(': case ')': case '[': case '.': return 0;
      default: break;
    }
    if (*q == '$' && q + 1 == end) {
      lit->at_end = 1;
      break;
    }
    if (*q == '%') {
      if (q + 1 == end || isalnum((unsigned char)q[1])) return 0;
      escapes = 1;
      q += 2;
    } else {
      q++;
    }
    if (q < end && (*q == '*' || *q == '+' || *q == '-' || *q == '?')) return 0;
    n++;
  }
  if (n == 0) return 0;
  lit->len = n;
  if (!escapes) {
    lit->text = p;
    return 1;
  }
  char *buf = lua_newuserdatauv(L, n, 0);
  size_t k = 0;
  for (const char *q = p; k < n; q++) {
    if (*q == '%') q++;
    buf[k++] = *q;
  }
  lit->text = buf;
  return 1;
}

/* First occurrence of lit in s[from, ls) (anchored: only at from), or -1. */
static ptrdiff_t literal_find(const char *s, size_t ls, size_t from, int anchored, const struct literal *lit) {
  if (from > ls || lit->len > ls - from) return -1;
  if (lit->at_end) {
    size_t at = ls - lit->len;
    if (anchored && at != from) return -1;
    return memcmp(s + at, lit->text, lit->len) == 0 ? (ptrdiff_t)at : -1;
  }
  if (anchored) return memcmp(s + from, lit->text, lit->len) == 0 ? (ptrdiff_t)from : -1;
  const char *hit = memmem(s + from, ls - from, lit->text, lit->len);
  return hit ? hit - s : -1;
}

/* ---- find, match ---- */

/* A 1-based, possibly negative, init argument as a 0-based offset (may be past the end). */
static size_t start_offset(lua_Integer pos, size_t len) {
  if (pos > 0) return (size_t)pos - 1;
  if (pos == 0 || pos < -(lua_Integer)len) return 0;
  return len - (size_t)(-pos);
}

static int find_or_match(lua_State *L, int find) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  size_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
  if (init > ls) {
    luaL_pushfail(L);
    return 1;
  }
  if (find && (lua_toboolean(L, 4) || no_specials(p, lp))) {
    const char *hit = lp == 0 ? s + init : memmem(s + init, ls - init, p, lp);
    if (!hit) {
      luaL_pushfail(L);
      return 1;
    }
    lua_pushinteger(L, (hit - s) + 1);
    lua_pushinteger(L, (hit - s) + (lua_Integer)lp);
    return 2;
  }
  int anchored = *p == '^';
  const char *body = p + anchored;
  struct literal lit;
  if (as_literal(L, body, lp - anchored, &lit)) {
    ptrdiff_t at = literal_find(s, ls, init, anchored, &lit);
    if (at < 0) {
      luaL_pushfail(L);
      return 1;
    }
    if (find) {
      lua_pushinteger(L, at + 1);
      lua_pushinteger(L, at + (lua_Integer)lit.len);
    } else {
      lua_pushlstring(L, s + at, lit.len);
    }
    return find ? 2 : 1;
  }
  struct run r;
  run_init(&r, L, find ? "string.find" : "string.match", s, ls, p, lp);
  for (const char *from = s + init;; from++) {
    run_restart(&r);
    const char *e = match_here(&r, from, body);
    if (e) {
      if (!find) return push_captures(&r, from, e);
      lua_pushinteger(L, (from - s) + 1);
      lua_pushinteger(L, e - s);
      return push_captures(&r, NULL, NULL) + 2;
    }
    if (anchored || from >= r.subj_end) break;
  }
  luaL_pushfail(L);
  return 1;
}

/* string.find(s, pattern [, init [, plain]]) */
static int l_find(lua_State *L) { return find_or_match(L, 1); }

/* string.match(s, pattern [, init]) */
static int l_match(lua_State *L) { return find_or_match(L, 0); }

/* ---- gmatch ---- */

/* Where a gmatch iterator is: offsets, since the strings are upvalues of the iterator. */
struct gmatch_state {
  size_t next;     /* first subject offset to try; past the length when done */
  size_t last_end; /* end offset of the last match, which a new empty match may not repeat */
  int has_last;    /* whether last_end is set */
};

/* The gmatch iterator: upvalues subject, pattern, state. Returns the next match's captures, or
 * nothing at the end. */
static int l_gmatch_step(lua_State *L) {
  size_t ls, lp;
  const char *s = lua_tolstring(L, lua_upvalueindex(1), &ls);
  const char *p = lua_tolstring(L, lua_upvalueindex(2), &lp);
  struct gmatch_state *g = lua_touserdata(L, lua_upvalueindex(3));
  struct literal lit;
  /* no anchor here: a leading '^' is a plain character in gmatch */
  if (as_literal(L, p, lp, &lit)) {
    ptrdiff_t at = literal_find(s, ls, g->next, 0, &lit);
    if (at < 0) {
      g->next = ls + 1;
      return 0;
    }
    g->next = g->last_end = (size_t)at + lit.len;
    g->has_last = 1;
    lua_pushlstring(L, s + at, lit.len);
    return 1;
  }
  struct run r;
  run_init(&r, L, "string.gmatch", s, ls, p, lp);
  for (size_t from = g->next; from <= ls; from++) {
    run_restart(&r);
    const char *e = match_here(&r, s + from, p);
    if (e && !(g->has_last && e == s + g->last_end)) {
      g->next = g->last_end = (size_t)(e - s);
      g->has_last = 1;
      return push_captures(&r, s + from, e);
    }
  }
  g->next = ls + 1; /* another call would scan the same text to the same end */
  return 0;
}

/* string.gmatch(s, pattern [, init]) */
static int l_gmatch(lua_State *L) {
  size_t ls;
  luaL_checklstring(L, 1, &ls);
  luaL_checkstring(L, 2);
  size_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
  lua_settop(L, 2);
  struct gmatch_state *g = lua_newuserdatauv(L, sizeof *g, 0);
  g->next = init > ls ? ls + 1 : init;
  g->last_end = 0;
  g->has_last = 0;
  lua_pushcclosure(L, l_gmatch_step, 3);
  return 1;
}

/* ---- gsub ---- */

/* Appends a replacement string (the stack's argument 3, repl) for the match [s, e), expanding
 * %0-%9 and %%. */
static void add_template(struct run *r, luaL_Buffer *b, const char *repl, size_t rl, const char *s,
                         const char *e) {
  const char *end = repl + rl, *pct;
  while ((pct = memchr(repl, '%', (size_t)(end - repl))) != NULL) {
    charge(r, 1);
    luaL_addlstring(b, repl, (size_t)(pct - repl));
    char c = pct[1]; /* the '\0' after the string if '%' is last: an error below */
    if (c == '%') {
      luaL_addchar(b, '%');
    } else if (c == '0') {
      luaL_addlstring(b, s, (size_t)(e - s));
    } else if (isdigit((unsigned char)c)) {
      const char *text;
      ptrdiff_t len = get_capture(r, c - '1', s, e, &text);
      if (len == CAP_POSITION) luaL_addvalue(b); /* the position get_capture pushed */
      else luaL_addlstring(b, text, (size_t)len);
    } else {
      luaL_error(r->L, "invalid use of '%c' in replacement string", '%');
    }
    repl = pct + 2;
  }
  luaL_addlstring(b, repl, (size_t)(end - repl));
}

/* Appends the replacement for the match [s, e) according to argument 3 (kind is its type).
 * Returns whether it changed anything: a false or nil from a table or function keeps the match. */
static int add_replacement(struct run *r, luaL_Buffer *b, int kind, const char *repl, size_t rl,
                           const char *s, const char *e) {
  lua_State *L = r->L;
  charge(r, 1);
  if (kind == LUA_TFUNCTION) {
    lua_pushvalue(L, 3);
    int n = push_captures(r, s, e);
    lua_call(L, n, 1);
  } else if (kind == LUA_TTABLE) {
    push_capture(r, 0, s, e);
    lua_gettable(L, 3);
  } else {
    add_template(r, b, repl, rl, s, e);
    return 1;
  }
  if (!lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    luaL_addlstring(b, s, (size_t)(e - s));
    return 0;
  }
  if (!lua_isstring(L, -1)) return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
  luaL_addvalue(b);
  return 1;
}

/* string.gsub(s, pattern, repl [, n]) */
static int l_gsub(lua_State *L) {
  size_t ls, lp, rl = 0;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  int kind = lua_type(L, 3);
  lua_Integer max_n = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
  luaL_argexpected(L, kind == LUA_TNUMBER || kind == LUA_TSTRING || kind == LUA_TFUNCTION || kind == LUA_TTABLE,
                   3, "string/function/table");
  lua_settop(L, 4);
  const char *repl = NULL;
  if (kind == LUA_TNUMBER || kind == LUA_TSTRING) repl = lua_tolstring(L, 3, &rl); /* numbers as text */
  int anchored = *p == '^';
  const char *body = p + anchored;
  struct literal lit;
  int literal = as_literal(L, body, lp - anchored, &lit); /* may push a userdata: before the buffer */
  struct run r;
  run_init(&r, L, "string.gsub", s, ls, p, lp);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  const char *src = s, *last = NULL;
  lua_Integer n = 0;
  int changed = 0;
  if (literal) {
    while (n < max_n) {
      ptrdiff_t at = literal_find(s, ls, (size_t)(src - s), anchored, &lit);
      if (at < 0) break;
      luaL_addlstring(&b, src, (size_t)(s + at - src));
      n++;
      changed |= add_replacement(&r, &b, kind, repl, rl, s + at, s + at + lit.len);
      src = s + at + lit.len;
      if (anchored) break;
    }
  } else {
    while (n < max_n) {
      run_restart(&r);
      const char *e = match_here(&r, src, body);
      if (e && e != last) { /* an empty match right after the previous match does not count */
        n++;
        changed |= add_replacement(&r, &b, kind, repl, rl, src, e);
        src = last = e;
      } else if (src < r.subj_end) {
        luaL_addchar(&b, *src++);
      } else {
        break;
      }
      if (anchored) break;
    }
  }
  if (!changed) {
    lua_pushvalue(L, 1);
  } else {
    luaL_addlstring(&b, src, (size_t)(r.subj_end - src));
    luaL_pushresult(&b);
  }
  lua_pushinteger(L, n);
  return 2;
}

/* ---- installing ---- */

static const luaL_Reg strpat_funcs[] = {
    {"find", l_find}, {"match", l_match}, {"gmatch", l_gmatch}, {"gsub", l_gsub}, {NULL, NULL}};

/* Sets the four functions in the table on top of the stack, raw: a sandbox's read-only proxy would
 * raise from __newindex outside any protected call. */
static void set_funcs(lua_State *L) {
  for (const luaL_Reg *f = strpat_funcs; f->name; f++) {
    lua_pushstring(L, f->name);
    lua_pushcfunction(L, f->func);
    lua_rawset(L, -3);
  }
}

int sg_strpat_install(lua_State *L) {
  int done = 0;
  luaL_checkstack(L, 4, NULL);
  lua_pushliteral(L, "");
  if (lua_getmetatable(L, -1)) {
    if (lua_getfield(L, -1, "__index") == LUA_TTABLE) {
      set_funcs(L);
      done = 1;
    }
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  if (lua_getglobal(L, "string") == LUA_TTABLE) {
    set_funcs(L);
    done = 1;
  }
  lua_pop(L, 1);
  return done ? 0 : -1;
}
