package main

// What Ollama reads off a parsed TEMPLATE besides rendering it, written from Ollama's tools
// package (tools/template.go, late-2026 line): the tag its tool-call parser waits for.
//
// The tag is the first text of the first `{{ if }}` whose pipeline names .ToolCalls as a
// field (`.ToolCalls`, `.X.ToolCalls`; not `$m.ToolCalls`, not inside parentheses), found
// depth-first through if/range/with bodies and else branches of the main template. Its
// first text is searched depth-first too, but an action, or a nested if/range/with that
// holds no text before its first action, ends the search. The text is cut at its first
// "{", trimmed; empty (or no such if) means "{": any JSON object.

import (
	"strings"
	"text/template"
	"text/template/parse"
)

func toolCallTag(tmpl *template.Template) string {
	if tmpl == nil || tmpl.Tree == nil {
		return "{"
	}
	node := findToolCallsIf(tmpl.Tree.Root.Nodes)
	if node == nil {
		return "{"
	}
	text := firstText(node.List.Nodes)
	if text == nil {
		return "{"
	}
	tag := strings.ReplaceAll(string(text.Text), "\r\n", "\n")
	tag, _, _ = strings.Cut(tag, "{")
	tag = strings.TrimSpace(tag)
	if tag == "" {
		return "{"
	}
	return tag
}

func namesToolCalls(n *parse.IfNode) bool {
	for _, cmd := range n.Pipe.Cmds {
		for _, arg := range cmd.Args {
			if field, ok := arg.(*parse.FieldNode); ok && contains(field.Ident, "ToolCalls") {
				return true
			}
		}
	}
	return false
}

func findToolCallsIf(nodes []parse.Node) *parse.IfNode {
	search := func(lists ...*parse.ListNode) *parse.IfNode {
		for _, l := range lists {
			if l == nil {
				continue
			}
			if found := findToolCallsIf(l.Nodes); found != nil {
				return found
			}
		}
		return nil
	}
	for _, node := range nodes {
		var found *parse.IfNode
		switch n := node.(type) {
		case *parse.IfNode:
			if namesToolCalls(n) {
				return n
			}
			found = search(n.List, n.ElseList)
		case *parse.ListNode:
			found = search(n)
		case *parse.RangeNode:
			found = search(n.List, n.ElseList)
		case *parse.WithNode:
			found = search(n.List, n.ElseList)
		}
		if found != nil {
			return found
		}
	}
	return nil
}

func firstText(nodes []parse.Node) *parse.TextNode {
	inBranch := func(b *parse.BranchNode) *parse.TextNode {
		if t := firstText(b.List.Nodes); t != nil {
			return t
		}
		if b.ElseList != nil {
			return firstText(b.ElseList.Nodes)
		}
		return nil
	}
	for _, node := range nodes {
		switch n := node.(type) {
		case *parse.TextNode:
			return n
		case *parse.ListNode:
			if t := firstText(n.Nodes); t != nil {
				return t
			}
		case *parse.IfNode:
			return inBranch(&n.BranchNode)
		case *parse.RangeNode:
			return inBranch(&n.BranchNode)
		case *parse.WithNode:
			return inBranch(&n.BranchNode)
		case *parse.ActionNode:
			return nil
		}
	}
	return nil
}
