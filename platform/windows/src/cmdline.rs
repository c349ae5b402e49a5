//! Splitting a Windows command line into arguments, by the rules of
//! `CommandLineToArgvW` (and the MSVC runtime since 2008), in pure Rust.
//!
//! Windows passes a process one command-line string; every program splits it
//! itself. DaemonEye records both the string (`command_line`, verbatim) and
//! the split that almost every program sees (`argv`). The rules:
//!
//! - The program name (first argument) is special: a `"` toggles quoting and
//!   is dropped, backslashes are literal, and an unquoted space or tab ends it.
//! - After it, unquoted spaces and tabs separate arguments (runs count once).
//! - `2n` backslashes followed by `"` give `n` backslashes and the quote
//!   toggles quoting; `2n + 1` backslashes followed by `"` give `n`
//!   backslashes and a literal `"`. Backslashes not followed by `"` are
//!   literal.
//! - Inside quotes, `""` is one literal `"` (and quoting continues).
//!
//! Only ASCII space, tab, `"` and `\` are special, so working on `char`s is
//! the same as working on UTF-16 code units.

/// Splits `line` into arguments as `CommandLineToArgvW` would. An empty line
/// gives no arguments (the Windows function would substitute the path of the
/// calling program, which is meaningless for another process).
pub fn split_command_line(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    if line.is_empty() {
        return args;
    }
    let mut chars = line.chars().peekable();

    // The program name.
    let mut cur = String::new();
    let mut in_quotes = false;
    for c in chars.by_ref() {
        match c {
            '"' => in_quotes = !in_quotes,
            ' ' | '\t' if !in_quotes => break,
            _ => cur.push(c),
        }
    }
    args.push(cur);
    while matches!(chars.peek(), Some(' ' | '\t')) {
        chars.next();
    }

    // The arguments.
    let mut cur = String::new();
    let mut in_arg = false;
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' if !in_quotes => {
                if in_arg {
                    args.push(std::mem::take(&mut cur));
                    in_arg = false;
                }
            }
            '\\' => {
                in_arg = true;
                let mut backslashes = 1usize;
                while chars.peek() == Some(&'\\') {
                    chars.next();
                    backslashes += 1;
                }
                if chars.peek() == Some(&'"') {
                    cur.extend(std::iter::repeat_n('\\', backslashes / 2));
                    if backslashes % 2 == 1 {
                        chars.next();
                        cur.push('"');
                    }
                } else {
                    cur.extend(std::iter::repeat_n('\\', backslashes));
                }
            }
            '"' => {
                in_arg = true;
                if in_quotes && chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    in_quotes = !in_quotes;
                }
            }
            _ => {
                in_arg = true;
                cur.push(c);
            }
        }
    }
    if in_arg {
        args.push(cur);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::split_command_line as split;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn program_name_rules() {
        assert_eq!(split(r#""C:\Program Files\App\app.exe" -x"#), v(&[r"C:\Program Files\App\app.exe", "-x"]));
        // Backslashes before a quote are literal in the program name.
        assert_eq!(split(r#"C:\dir\"odd name"\x.exe a"#), v(&[r"C:\dir\odd name\x.exe", "a"]));
        assert_eq!(split("notepad.exe"), v(&["notepad.exe"]));
        assert!(split("").is_empty());
        // Leading whitespace gives an empty program name, as on Windows.
        assert_eq!(split(" a"), v(&["", "a"]));
    }

    #[test]
    fn quotes_backslashes_and_whitespace() {
        assert_eq!(split(r#"p "a b" c"#), v(&["p", "a b", "c"]));
        assert_eq!(split("p a\t\t b  "), v(&["p", "a", "b"]));
        assert_eq!(split(r#"p a\\\"b"#), v(&["p", r#"a\"b"#]));
        assert_eq!(split(r#"p a\\"b c" d"#), v(&["p", r"a\b c", "d"]));
        assert_eq!(split(r"p C:\dir\ x\\y"), v(&["p", r"C:\dir\", r"x\\y"]));
        assert_eq!(split(r#"p "a""b" c"#), v(&["p", r#"a"b"#, "c"]));
        assert_eq!(split(r#"p "" x"#), v(&["p", "", "x"]));
        assert_eq!(split(r#"p \"x\""#), v(&["p", r#""x""#]));
    }

    #[test]
    fn unicode_is_taken_literally() {
        let line = r#""C:\Users\Zoë\日本\app.exe" --name "Ünïcödé 名前" 🦀"#;
        assert_eq!(split(line), v(&[r"C:\Users\Zoë\日本\app.exe", "--name", "Ünïcödé 名前", "🦀"]));
    }

    #[test]
    fn powershell_encoded_command_shape() {
        let line = r#"powershell.exe -NoP -W Hidden -Command "& {Write-Host \"hi there\"}""#;
        assert_eq!(
            split(line),
            v(&["powershell.exe", "-NoP", "-W", "Hidden", "-Command", r#"& {Write-Host "hi there"}"#])
        );
    }
}
