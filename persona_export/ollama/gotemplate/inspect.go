package main

// What Ollama reads off a parsed TEMPLATE besides rendering it, written from Ollama's tools
// package (tools/template.go, late-2026 line): the tag its tool-call parser waits for.
//
// The tag is the first text of the first `{{ if }}` whose pipeline names .ToolCalls as a
// field (`.ToolCalls`, `.X.ToolCalls`; not `$m.ToolCalls`, not inside parentheses), found
// depth-first through if/range/with bodies and else branches of the main template. Its
// first non-blank text is searched depth-first too, but an action, or a nested
// if/range/with that holds no such text before its first action, ends the search. The text is cut at its first
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
			if strings.TrimSpace(string(n.Text)) == "" { // blank text is skipped
				continue
			}
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

// thinkingTags is Ollama's heuristic for the tags around thinking text (thinking/template.go):
// for each .Thinking field (a field node, in any pipeline) whose nearest enclosing range
// iterates over a .Messages field, the first and last nodes of the nearest enclosing list,
// when they are texts, trimmed. The last such field visited wins.
func thinkingTags(tmpl *template.Template) (string, string) {
	if tmpl == nil || tmpl.Tree == nil {
		return "", ""
	}
	var opening, closing string
	var visit func(n parse.Node, ancestors []parse.Node)
	visit = func(n parse.Node, ancestors []parse.Node) {
		if n == nil {
			return
		}
		ancestors = append(ancestors, n)
		if f, ok := n.(*parse.FieldNode); ok && len(f.Ident) > 0 && f.Ident[0] == "Thinking" {
			var rng *parse.RangeNode
			for i := len(ancestors) - 1; i >= 0 && rng == nil; i-- {
				rng, _ = ancestors[i].(*parse.RangeNode)
			}
			if rng != nil && pipeUsesField(rng.Pipe, "Messages") {
				for i := len(ancestors) - 1; i >= 0; i-- {
					if l, ok := ancestors[i].(*parse.ListNode); ok {
						if t, ok := l.Nodes[0].(*parse.TextNode); ok {
							opening = strings.TrimSpace(string(t.Text))
						}
						if t, ok := l.Nodes[len(l.Nodes)-1].(*parse.TextNode); ok {
							closing = strings.TrimSpace(string(t.Text))
						}
						break
					}
				}
			}
		}
		for _, child := range children(n) {
			visit(child, ancestors)
		}
	}
	visit(tmpl.Tree.Root, nil)
	return opening, closing
}

func children(n parse.Node) []parse.Node {
	var out []parse.Node
	switch x := n.(type) {
	case *parse.ListNode:
		out = append(out, x.Nodes...)
	case *parse.IfNode, *parse.RangeNode, *parse.WithNode:
		var b *parse.BranchNode
		switch y := x.(type) {
		case *parse.IfNode:
			b = &y.BranchNode
		case *parse.RangeNode:
			b = &y.BranchNode
		case *parse.WithNode:
			b = &y.BranchNode
		}
		for _, c := range []parse.Node{b.Pipe, b.List, b.ElseList} {
			if c != nil && !isNilList(c) {
				out = append(out, c)
			}
		}
	case *parse.ActionNode:
		out = append(out, x.Pipe)
	case *parse.TemplateNode:
		if x.Pipe != nil {
			out = append(out, x.Pipe)
		}
	case *parse.PipeNode:
		for _, c := range x.Cmds {
			out = append(out, c)
		}
	case *parse.CommandNode:
		out = append(out, x.Args...)
	}
	return out
}

func isNilList(n parse.Node) bool {
	l, ok := n.(*parse.ListNode)
	return ok && l == nil
}

func pipeUsesField(p *parse.PipeNode, name string) bool {
	found := false
	var visit func(n parse.Node)
	visit = func(n parse.Node) {
		if f, ok := n.(*parse.FieldNode); ok && len(f.Ident) > 0 && f.Ident[0] == name {
			found = true
		}
		for _, c := range children(n) {
			visit(c)
		}
	}
	if p != nil {
		visit(p)
	}
	return found
}
