//! The shell commands of README.md, for the tests that run its sections as a reader would, so
//! the README cannot drift from what works.

/// The text of `markdown` after the line `heading` (e.g. `## A five-minute tour`), up to the
/// next `## ` heading. Fails the test when there is no such heading.
pub fn section<'a>(markdown: &'a str, heading: &str) -> &'a str {
    let start = markdown
        .find(heading)
        .unwrap_or_else(|| panic!("README.md has no {heading:?} section"))
        + heading.len();
    let rest = &markdown[start..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// The bodies of the ```` ```sh ```` fenced blocks of `text`, in order.
pub fn sh_blocks(text: &str) -> Vec<&str> {
    text.split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("\n```").next())
        .collect()
}

/// The shell commands of one block: continuation lines joined, a here-document kept with its
/// command, comment-only lines dropped.
pub fn commands(block: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut lines = block.lines();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let mut command = line.to_owned();
        while command.trim_end().ends_with('\\') {
            let next = lines.next().expect("a continued line goes on");
            command.push('\n');
            command.push_str(next);
        }
        if let Some(start) = command.find("<<'") {
            let tag: String = command[start + 3..]
                .chars()
                .take_while(|c| *c != '\'')
                .collect();
            for body in lines.by_ref() {
                command.push('\n');
                command.push_str(body);
                if body == tag {
                    break;
                }
            }
        }
        commands.push(command);
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_ends_at_the_next_heading_and_its_blocks_are_read_in_order() {
        let markdown = "## A\n```sh\na\n```\n## B\ntext\n```sh\nb 1\n```\n```sh\nb 2\n```\n";
        assert_eq!(sh_blocks(section(markdown, "## A")), ["a"]);
        assert_eq!(sh_blocks(section(markdown, "## B")), ["b 1", "b 2"]);
    }
}
